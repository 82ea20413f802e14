//! The client subcommands, run as the real binary against a real server:
//! JSON output parsed back, tables, exit codes and the advice on failure.

use std::{path::Path, process::Command};

use policyhub::domain::PolicyBody;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDatabase, policyhub_binary, spawn_app, spawn_on};

/// What one run of the binary printed, and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Standard output as JSON, failing the test with both streams if the
    /// run failed or printed something else.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("{error}: {}{}", self.stdout, self.stderr))
    }

    #[track_caller]
    pub fn success(&self) -> &str {
        assert_eq!(self.code, 0, "{}{}", self.stdout, self.stderr);
        &self.stdout
    }
}

/// Runs `policyhub ARGS` against the server at `server`, without a token
/// and without the client config file of whoever runs the tests.
pub fn policyhub_at(server: &str, args: &[&str]) -> Run {
    policyhub_with(&[("POLICYHUB_SERVER", server)], args)
}

/// Runs `policyhub ARGS` with only `env` of the client's variables set.
pub fn policyhub_with(env: &[(&str, &str)], args: &[&str]) -> Run {
    let output = client_command(env, args).output().expect("run policyhub");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `policyhub ARGS` with only `env` of the client's variables set.
pub fn client_command(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(policyhub_binary());
    command.args(args);
    for name in [
        "POLICYHUB_SERVER",
        "POLICYHUB_TOKEN",
        "POLICYHUB_TOKEN_FILE",
        "POLICYHUB_CONTEXT",
        "POLICYHUB_CONNECT_TIMEOUT",
        "POLICYHUB_REQUEST_TIMEOUT",
        "POLICYHUB_ISSUER",
        "POLICYHUB_CLIENT_ID",
        "POLICYHUB_SCOPES",
    ] {
        command.env_remove(name);
    }
    command.env(
        "POLICYHUB_CLIENT_CONFIG",
        std::env::temp_dir().join("policyhub-tests-have-no-client-config.toml"),
    );
    command.envs(env.iter().copied());
    command
}

/// A token for `subject` with `role`, minted with the secret the server
/// generated in `data_dir` (`policyhub token` reads no server).
pub fn mint_token(data_dir: &str, subject: &str, role: &str) -> Run {
    policyhub_with(
        &[],
        &[
            "token",
            "--subject",
            subject,
            "--role",
            role,
            "--data-dir",
            data_dir,
        ],
    )
}

/// Runs `policyhub ARGS` against `app`.
pub fn policyhub(app: &TestApp, args: &[&str]) -> Run {
    policyhub_at(&format!("http://{}", app.address), args)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Drafts `body` from a JSON file and publishes it under `label`.
fn release(app: &TestApp, policy: &str, label: &str, body: Value, activate: bool) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "body.json", &body.to_string());
    policyhub(app, &["draft", policy, &file, "--output", "json"]).json();
    let mut args = vec!["publish", policy, "--label", label, "--output", "json"];
    if activate {
        args.push("--activate");
    }
    policyhub(app, &args).json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_draft_round_trips_through_get_version() {
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = "maxAmount: 500\ncurrencies:\n  - EUR\n  - USD\nlimits:\n  daily: 1000.5\n  enabled: true\n";
    let file = write(dir.path(), "limits.yaml", yaml);

    let drafted = policyhub(
        &app,
        &[
            "draft",
            "payments/card-limits",
            &file,
            "--change-notes",
            "from yaml",
            "--output",
            "json",
        ],
    )
    .json();
    let expected_body = json!({"maxAmount": 500, "currencies": ["EUR", "USD"],
                               "limits": {"daily": 1000.5, "enabled": true}});
    let expected_digest = PolicyBody::parse("body", expected_body.clone(), usize::MAX)
        .unwrap()
        .digest()
        .to_string();
    assert_eq!(drafted["version"]["version"], 1);
    assert_eq!(drafted["version"]["state"], "VERSION_STATE_DRAFT");
    assert_eq!(drafted["version"]["digest"], expected_digest.as_str());

    let read = policyhub(
        &app,
        &[
            "get-version",
            "payments/card-limits",
            "--version",
            "1",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(read["body"], expected_body);
    assert_eq!(read["changeNotes"], "from yaml");
    let table = policyhub(
        &app,
        &["get-version", "payments/card-limits", "--version", "1"],
    );
    assert!(
        table.success().contains("\"maxAmount\": 500"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("DRAFT"), "{}", table.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_activate_and_rollback_report_what_moved() {
    let app = spawn_app(Backend::Sqlite).await;
    let published = release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    assert_eq!(published["version"]["label"], "1.0.0");
    // The protobuf JSON mapping, as grpcurl prints it: defaults left out,
    // 64-bit integers as strings.
    assert_eq!(published["alreadyPublished"], Value::Null);
    assert_eq!(published["revision"], "1");
    let second = release(&app, "payments/limits", "1.1.0", json!({"max": 2}), false);
    assert_eq!(
        second["revision"],
        Value::Null,
        "published without activating"
    );

    let activated = policyhub(
        &app,
        &[
            "activate",
            "payments/limits@1.1.0",
            "--expected-active-version",
            "payments/limits@1",
            "--reason",
            "roll out",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(activated["revision"], "2");
    assert_eq!(
        activated["activations"],
        json!([{"namespace": "payments", "name": "limits", "version": 2, "previousVersion": 1}])
    );

    let rolled_back = policyhub(
        &app,
        &[
            "rollback",
            "payments/limits",
            "--reason",
            "broke",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(
        rolled_back,
        json!({"revision": "3", "version": 1, "previousVersion": 2})
    );
    let table = policyhub(
        &app,
        &[
            "rollback",
            "payments/limits",
            "--to-version",
            "2",
            "--reason",
            "fixed",
        ],
    );
    assert_eq!(
        table.success().trim(),
        "rolled back payments/limits to version 2 (was version 1) at revision 4"
    );
    assert_eq!(
        app.get_active("payments", "limits").await.unwrap().version,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activate_moves_several_policies_under_one_revision() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), false);
    release(&app, "web/flags", "2.0.0", json!({"dark": true}), false);
    let activated = policyhub(&app, &["activate", "payments/limits@1", "web/flags@2.0.0"]);
    let table = activated.success();
    assert!(table.starts_with("revision 1\nPOLICY"), "{table}");
    assert!(table.contains("web/flags        1        -"), "{table}");
    for (namespace, name) in [("payments", "limits"), ("web", "flags")] {
        assert_eq!(app.get_active(namespace, name).await.unwrap().revision, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_the_verified_active_bundle_that_verify_accepts() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    release(&app, "payments/limits", "1.1.0", json!({"max": 2}), true);

    let bundle = policyhub(&app, &["get", "payments/limits", "--output", "json"]).json();
    assert_eq!(bundle["version"], 2);
    assert_eq!(bundle["body"], json!({"max": 2}));
    assert_eq!(bundle["draft"], Value::Null, "false, so left out");
    let then = policyhub(
        &app,
        &[
            "get",
            "payments/limits",
            "--as-of-revision",
            "1",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(
        (then["version"].clone(), then["body"].clone()),
        (json!(1), json!({"max": 1}))
    );
    let by_label = policyhub(
        &app,
        &[
            "get-version",
            "payments/limits",
            "--label",
            "1.0.0",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(by_label["version"], 1);
    assert_eq!(by_label["state"], "VERSION_STATE_PUBLISHED");

    let dir = tempfile::tempdir().unwrap();
    let keys = policyhub(&app, &["get-signing-keys", "--output", "json"]);
    let jwks = keys.json();
    assert_eq!(jwks["keys"][0]["kid"], jwks["signingKeyId"]);
    let jwks_file = write(dir.path(), "jwks.json", &keys.stdout);
    let bundle_file = write(dir.path(), "bundle.json", &bundle.to_string());
    let verified = policyhub(&app, &["verify", "--jwks", &jwks_file, &bundle_file]);
    assert!(
        verified
            .success()
            .contains("payments/limits version 2 (1.1.0)"),
        "{}",
        verified.stdout
    );
    // One flipped character of the signature: refused with error and hint.
    let jws = bundle["jws"].as_str().unwrap();
    let flipped = if jws.ends_with('A') { "B" } else { "A" };
    let tampered = format!("{}{flipped}", &jws[..jws.len() - 1]);
    let tampered_file = write(dir.path(), "tampered.jws", &tampered);
    let refused = policyhub(&app, &["verify", "--jwks", &jwks_file, &tampered_file]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .starts_with("error: the bundle does not verify: ")
            && refused.stderr.contains("\nhint: "),
        "{}",
        refused.stderr
    );
    let table = policyhub(&app, &["get-signing-keys"]);
    assert!(table.success().starts_with("KEY ID"), "{}", table.stdout);
    assert!(
        table
            .stdout
            .contains(jwks["signingKeyId"].as_str().unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_falls_back_to_the_open_draft_only_when_asked() {
    let app = spawn_app(Backend::Sqlite).await;
    app.draft("payments", "limits", json!({"max": 9})).await;
    let refused = policyhub(&app, &["get", "payments/limits"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    let draft = policyhub(
        &app,
        &[
            "get",
            "payments/limits",
            "--allow-draft-fallback",
            "--output",
            "json",
        ],
    )
    .json();
    assert_eq!(draft["draft"], true);
    assert_eq!(draft["jws"], Value::Null);
    assert_eq!(draft["body"], json!({"max": 9}));
    let table = policyhub(&app, &["get", "payments/limits", "--allow-draft-fallback"]);
    assert!(
        table.success().contains("never enforce it"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_print_tables_for_people_and_json_for_scripts() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    release(&app, "payments/limits", "1.1.0", json!({"max": 2}), false);
    release(&app, "web/flags", "0.1.0", json!({"dark": true}), false);

    let versions = policyhub(&app, &["versions", "payments/limits", "--output", "json"]).json();
    let listed: Vec<(u64, &str, bool)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["label"].as_str().unwrap(),
                v["active"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed, [(2, "1.1.0", false), (1, "1.0.0", true)]);
    let table = policyhub(&app, &["versions", "payments/limits"]);
    let lines: Vec<&str> = table.success().lines().collect();
    assert!(
        lines[0].starts_with("VERSION  STATE      LABEL"),
        "{}",
        table.stdout
    );
    assert!(
        lines[2].starts_with("1        PUBLISHED  1.0.0  *"),
        "{}",
        table.stdout
    );

    let policies = policyhub(&app, &["policies", "--output", "json"]).json();
    let names: Vec<&str> = policies["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["limits", "flags"]);
    let in_web = policyhub(&app, &["policies", "web", "--output", "json"]).json();
    assert_eq!(in_web["policies"].as_array().unwrap().len(), 1);
    assert!(
        policyhub(&app, &["policies"])
            .success()
            .contains("payments/limits  1")
    );
    let one = policyhub(&app, &["get-policy", "payments/limits", "--output", "json"]).json();
    let listed = &policies["policies"][0];
    assert_eq!(&one, listed);
    let shown = policyhub(&app, &["get-policy", "payments/limits"]);
    let shown = shown.success();
    assert!(
        shown.contains("active") && shown.contains("0 applied"),
        "{shown}"
    );
    let missing = policyhub(&app, &["get-policy", "payments/nothing"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("nothing"), "{}", missing.stderr);

    let events = policyhub(
        &app,
        &[
            "events",
            "payments/limits",
            "--kind",
            "published",
            "--output",
            "json",
        ],
    )
    .json();
    let kinds: Vec<(&str, u64)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["newVersion"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("EVENT_KIND_PUBLISHED", 2), ("EVENT_KIND_PUBLISHED", 1)]
    );
    // Up to the first publication, by its actor, of two kinds at once.
    let first = events["events"][1]["at"].as_str().unwrap();
    let until_first = policyhub(
        &app,
        &[
            "events",
            "payments/limits",
            "--kind",
            "published",
            "--kind",
            "draft-created",
            "--actor",
            "anonymous",
            "--until",
            first,
            "--output",
            "json",
        ],
    )
    .json();
    let kinds: Vec<&str> = until_first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["EVENT_KIND_PUBLISHED", "EVENT_KIND_DRAFT_CREATED"]);
    let since_first = policyhub(
        &app,
        &[
            "events",
            "payments/limits",
            "--kind",
            "published",
            "--since",
            first,
            "--actor",
            "someone-else",
            "--output",
            "json",
        ],
    )
    .json();
    assert!(since_first["events"].as_array().is_none_or(Vec::is_empty));
    let limited = policyhub(
        &app,
        &["events", "payments", "--limit", "2", "--output", "json"],
    );
    assert_eq!(limited.json()["events"].as_array().unwrap().len(), 2);
    assert!(
        limited.stderr.contains("pass --limit to see more"),
        "{}",
        limited.stderr
    );
    let table = policyhub(&app, &["events", "web"]);
    assert!(
        table.success().contains("DRAFT_CREATED"),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_old_and_new_values_and_the_json_patch() {
    let app = spawn_app(Backend::Sqlite).await;
    release(
        &app,
        "payments/limits",
        "1.0.0",
        json!({"max": 500, "currencies": ["EUR", "USD"]}),
        false,
    );
    release(
        &app,
        "payments/limits",
        "1.1.0",
        json!({"max": 50, "currencies": ["EUR"], "note": "x"}),
        false,
    );

    let table = policyhub(&app, &["diff", "payments/limits", "1", "1.1.0"]);
    let text = table.success();
    assert!(
        !text.contains('\u{1b}'),
        "no colour off a terminal: {text:?}"
    );
    for line in [
        "- /max: 500",
        "+ /max: 50",
        "- /currencies/1: \"USD\"",
        "+ /note: \"x\"",
    ] {
        assert!(
            text.lines().any(|printed| printed == line),
            "{line} in {text}"
        );
    }
    let patch = policyhub(
        &app,
        &["diff", "payments/limits", "1", "2", "--output", "json"],
    )
    .json();
    assert!(
        patch["fromDigest"].as_str().unwrap().starts_with("sha256:")
            && patch["fromDigest"] != patch["toDigest"],
        "{patch}"
    );
    let mut body = json!({"max": 500, "currencies": ["EUR", "USD"]});
    let operations: json_patch::Patch =
        serde_json::from_value(patch["operations"].clone()).unwrap();
    json_patch::patch(&mut body, &operations).unwrap();
    assert_eq!(body, json!({"max": 50, "currencies": ["EUR"], "note": "x"}));
    let same = policyhub(&app, &["diff", "payments/limits", "2", "2"]);
    assert!(
        same.success().ends_with("no differences\n"),
        "{}",
        same.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_refusals_usage_errors_and_an_unreachable_server_apart() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    release(&app, "payments/limits", "1.1.0", json!({"max": 2}), false);

    let missing = policyhub(&app, &["get", "payments/nothing"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("payments/nothing"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains("hint: list what exists"),
        "{}",
        missing.stderr
    );

    let stale = policyhub(
        &app,
        &[
            "activate",
            "payments/limits@2",
            "--expected-active-version",
            "payments/limits@7",
        ],
    );
    assert_eq!(stale.code, 1);
    assert!(
        stale
            .stderr
            .contains("someone else changed the active version; re-read"),
        "{}",
        stale.stderr
    );

    let immutable = release_refused(&app);
    assert_eq!(immutable.code, 1);
    assert!(
        immutable.stderr.contains("released versions are immutable"),
        "{}",
        immutable.stderr
    );

    for usage in [
        vec!["activate", "payments/limits"],
        vec!["get", "no-slash"],
        vec![
            "activate",
            "payments/limits@2",
            "--expected-active-version",
            "web/flags@1",
        ],
        vec!["events", "--kind", "deleted"],
        vec!["events", "--since", "yesterday"],
    ] {
        let run = policyhub(&app, &usage);
        assert_eq!(run.code, 2, "{usage:?}: {}", run.stderr);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = policyhub_at(&format!("http://127.0.0.1:{port}"), &["policies"]);
    assert_eq!(unreachable.code, 3, "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("is the server running"),
        "{}",
        unreachable.stderr
    );
}

/// Publishing label 1.0.0 again with another body.
fn release_refused(app: &TestApp) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "body.yaml", "max: 3\n");
    policyhub(app, &["draft", "payments/limits", &file]).success();
    policyhub(app, &["publish", "payments/limits", "--label", "1.0.0"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_server_gets_advice_about_tokens_and_roles() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let data_dir = database.data_dir.path().display().to_string();
    let app = spawn_on(database, |settings| settings.insecure = false).await;

    let anonymous = policyhub(&app, &["policies"]);
    assert_eq!(anonymous.code, 1);
    assert!(
        anonymous
            .stderr
            .contains("hint: pass a valid token with --token-file or POLICYHUB_TOKEN"),
        "{}",
        anonymous.stderr
    );

    let minted = mint_token(&data_dir, "bob", "payments:reader");
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(dir.path(), "token", minted.success());
    let body = write(dir.path(), "body.yaml", "max: 1\n");
    let denied = policyhub(
        &app,
        &[
            "draft",
            "payments/limits",
            &body,
            "--token-file",
            &token_file,
        ],
    );
    assert_eq!(denied.code, 1);
    assert!(
        denied.stderr.contains("needs the author role"),
        "{}",
        denied.stderr
    );
    assert!(
        denied
            .stderr
            .contains("hint: use a token whose roles claim grants"),
        "{}",
        denied.stderr
    );
    let allowed = policyhub(&app, &["policies", "--token-file", &token_file]);
    assert!(
        allowed.success().starts_with("POLICY"),
        "{}",
        allowed.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_draft_and_set_schema_have_their_subcommands() {
    let app = spawn_app(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let body = write(dir.path(), "body.yaml", "max: 1\n");
    policyhub(&app, &["draft", "payments/limits", &body]).success();
    let discarded = policyhub(
        &app,
        &[
            "discard-draft",
            "payments/limits",
            "--reason",
            "not needed",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(discarded["version"]["state"], "VERSION_STATE_DISCARDED");
    let nothing = policyhub(&app, &["discard-draft", "payments/limits"]);
    assert_eq!(nothing.code, 1, "{}", nothing.stderr);
    assert!(nothing.stderr.contains("hint:"), "{}", nothing.stderr);

    let schema = write(
        dir.path(),
        "schema.yaml",
        "type: object\nrequired: [max]\nproperties:\n  max: {type: integer, maximum: 10}\n",
    );
    let set = policyhub(
        &app,
        &["set-schema", "payments/limits", &schema, "-o", "json"],
    )
    .json();
    assert_eq!(set["policy"]["schema"]["required"], json!(["max"]));
    let too_big = write(dir.path(), "big.yaml", "max: 11\n");
    policyhub(&app, &["draft", "payments/limits", &too_big]).success();
    let refused = policyhub(&app, &["publish", "payments/limits"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("/max"), "{}", refused.stderr);
    let removed = policyhub(&app, &["set-schema", "payments/limits", "--remove"]);
    assert!(
        removed
            .success()
            .contains("schema of payments/limits removed"),
        "{}",
        removed.stdout
    );
    policyhub(&app, &["publish", "payments/limits"]).success();
    let usage = policyhub(&app, &["set-schema", "payments/limits"]);
    assert_eq!(usage.code, 2, "a schema file or --remove: {}", usage.stderr);
}

/// Which server a failing command talks to.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A server that takes requests without a token.
    Open,
    /// A server that needs a token.
    Secured,
    /// A port nothing listens on.
    Nowhere,
}

/// A failure a user can provoke, and what the command must print.
struct Provoked {
    /// The failure, for the assertion messages.
    what: &'static str,
    target: Target,
    args: Vec<String>,
    code: i32,
    /// Text the error must hold.
    error: &'static str,
    /// Text the hint line must hold.
    hint: &'static str,
}

fn provoke(
    what: &'static str,
    target: Target,
    args: &[&str],
    code: i32,
    error: &'static str,
    hint: &'static str,
) -> Provoked {
    Provoked {
        what,
        target,
        args: args.iter().map(|arg| arg.to_string()).collect(),
        code,
        error,
        hint,
    }
}

/// Request fields that have a flag of their own: an error names the flag.
const PROTO_FIELDS: [&str; 5] = [
    "to_version",
    "expected_active_version",
    "as_of_revision",
    "label_selector",
    "allow_draft_fallback",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_prints_an_error_a_hint_and_its_exit_code() {
    let open = spawn_app(Backend::Sqlite).await;
    // payments/limits: 1.0.0 active, 1.1.0 published, an open draft.
    release(&open, "payments/limits", "1.0.0", json!({"max": 1}), true);
    release(&open, "payments/limits", "1.1.0", json!({"max": 2}), false);
    let dir = tempfile::tempdir().unwrap();
    let body = write(dir.path(), "body.yaml", "max: 3\n");
    policyhub(&open, &["draft", "payments/limits", &body]).success();
    // web/flags: a schema its open draft breaks.
    let schema = write(
        dir.path(),
        "schema.yaml",
        "type: object\nproperties:\n  max: {type: integer, maximum: 10}\n",
    );
    policyhub(&open, &["set-schema", "web/flags", &schema]).success();
    let too_big = write(dir.path(), "big.yaml", "max: 11\n");
    policyhub(&open, &["draft", "web/flags", &too_big]).success();

    let database = TestDatabase::new(Backend::Sqlite).await;
    let data_dir = database.data_dir.path().display().to_string();
    let secured = spawn_on(database, |settings| settings.insecure = false).await;
    let reader = mint_token(&data_dir, "bob", "payments:reader");
    let reader = write(dir.path(), "reader.token", reader.success());

    let bad_json = write(dir.path(), "bad.json", "{\"max\": 1,");
    let a_list = write(dir.path(), "list.yaml", "- 1\n- 2\n");
    let missing = dir.path().join("missing.json").display().to_string();
    let not_a_jwks = write(dir.path(), "jwks.json", "{\"max\": 1}");
    let checkout = dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("policies/limits/1.0.0")).unwrap();
    let checkout = checkout.display().to_string();

    use Target::*;
    let table = [
        provoke(
            "NOT_FOUND",
            Open,
            &["get", "payments/nothing"],
            1,
            "payments/nothing does not exist",
            "list what exists",
        ),
        provoke(
            "INVALID_ARGUMENT on a flag",
            Open,
            &[
                "rollback",
                "payments/limits",
                "--to-version",
                "0",
                "--reason",
                "x",
            ],
            1,
            "--to-version: version numbers start at 1",
            "correct the value named above",
        ),
        provoke(
            "INVALID_ARGUMENT on another flag",
            Open,
            &["get", "payments/limits", "--as-of-revision", "99"],
            1,
            "--as-of-revision: revision 99 is ahead",
            "correct the value named above",
        ),
        provoke(
            "FAILED_PRECONDITION of state",
            Open,
            &["rollback", "payments/limits", "--reason", "x"],
            1,
            "first version ever active; pass --to-version",
            "does not fit the current state",
        ),
        provoke(
            "FAILED_PRECONDITION of a schema",
            Open,
            &["publish", "web/flags"],
            1,
            "\n  /max: ",
            "breaks the policy's schema",
        ),
        provoke(
            "ABORTED compare-and-swap",
            Open,
            &[
                "activate",
                "payments/limits@2",
                "--expected-active-version",
                "payments/limits@7",
            ],
            1,
            "expected version 7 to be active",
            "someone else changed the active version",
        ),
        provoke(
            "ALREADY_EXISTS",
            Open,
            &["publish", "payments/limits", "--label", "1.0.0"],
            1,
            "1.0.0",
            "released versions are immutable",
        ),
        provoke(
            "UNAUTHENTICATED",
            Secured,
            &["policies"],
            1,
            "listing policies: ",
            "pass a valid token with --token-file",
        ),
        provoke(
            "PERMISSION_DENIED",
            Secured,
            &["draft", "payments/limits", &body, "--token-file", &reader],
            1,
            "needs the author role",
            "use a token whose roles claim grants",
        ),
        provoke(
            "unreachable server",
            Nowhere,
            &["policies"],
            3,
            "cannot reach the server at http://127.0.0.1:",
            "is the server running",
        ),
        provoke(
            "a missing input file",
            Open,
            &["draft", "payments/limits", &missing],
            1,
            "missing.json: no such file or directory",
            "check the path named above",
        ),
        provoke(
            "bad JSON",
            Open,
            &["draft", "payments/limits", &bad_json],
            1,
            "bad.json is not JSON: ",
            "fix the file at the line and column",
        ),
        provoke(
            "a body that is not an object",
            Open,
            &["draft", "payments/limits", &a_list],
            1,
            "must be a JSON object",
            "one JSON object",
        ),
        provoke(
            "a missing token file",
            Secured,
            &["policies", "--token-file", &missing],
            1,
            "missing.json: no such file or directory",
            "check the path named above",
        ),
        provoke(
            "a file that is not a JWKS",
            Open,
            &["verify", "--jwks", &not_a_jwks, &body],
            1,
            "is not a JWKS",
            "policyhub get-signing-keys -o json",
        ),
        provoke(
            "an invalid checkout",
            Open,
            &["sync", &checkout],
            1,
            "a release directory is named v<semver>",
            "fix every file listed",
        ),
        provoke(
            "a usage error of the command line",
            Open,
            &[
                "activate",
                "payments/limits@2",
                "--expected-active-version",
                "web/flags@1",
            ],
            2,
            "names a policy that is not among the targets",
            "leave its expectation out",
        ),
        provoke(
            "a usage error clap finds",
            Open,
            &["activate", "payments/limits"],
            2,
            "names no version",
            "`policyhub activate --help`",
        ),
        provoke(
            "a server that is not a URL",
            Open,
            &["policies", "--server", "policyhub.example"],
            2,
            "\"policyhub.example\" is not a server URL",
            "write http://HOST:PORT",
        ),
    ];

    let nowhere = format!("http://127.0.0.1:{}", crate::helpers::free_port());
    let mut wrong = Vec::new();
    for provoked in &table {
        let server = match provoked.target {
            Open => format!("http://{}", open.address),
            Secured => format!("http://{}", secured.address),
            Nowhere => nowhere.clone(),
        };
        let args: Vec<&str> = provoked.args.iter().map(String::as_str).collect();
        let run = policyhub_at(&server, &args);
        let error = run.stderr.strip_prefix("error: ").unwrap_or_default();
        let hints: Vec<&str> = run
            .stderr
            .lines()
            .filter_map(|line| line.strip_prefix("hint: "))
            .collect();
        let fine = run.code == provoked.code
            && error.starts_with(|first: char| !first.is_uppercase())
            && error.contains(provoked.error)
            && hints.len() == 1
            && hints[0].contains(provoked.hint)
            && run.stderr.ends_with('\n')
            && PROTO_FIELDS.iter().all(|field| !run.stderr.contains(field));
        if !fine {
            wrong.push(format!(
                "{} (expected exit {}, {:?}, hint {:?}): exit {}\n{}",
                provoked.what, provoked.code, provoked.error, provoked.hint, run.code, run.stderr
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `policyhub token --help` names every role the server knows.
#[test]
fn token_help_lists_every_role() {
    let help = policyhub_with(&[], &["token", "--help"]);
    for role in policyhub::grpc::auth::Role::ALL {
        assert!(
            help.success().contains(&role.to_string()),
            "{role} in {}",
            help.stdout
        );
    }
}

/// The commands renamed after their RPCs keep working under their old
/// names, with a warning naming the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_keys_commands_still_work_and_name_their_new_names() {
    let app = spawn_app(Backend::Sqlite).await;
    let new = policyhub(&app, &["get-signing-keys", "--output", "json"]);
    let old = policyhub(&app, &["keys", "list", "--output", "json"]);
    assert_eq!(old.success(), new.success());
    assert!(
        old.stderr.contains("use `policyhub get-signing-keys`"),
        "{}",
        old.stderr
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("key.pem").display().to_string();
    let generated = policyhub_with(&[], &["keys", "generate", "--out", &out]);
    assert!(!generated.success().trim().is_empty());
    let rotated = policyhub(&app, &["keys", "rotate", "--reason", "old name"]);
    assert!(rotated.success().contains("replaces"), "{}", rotated.stdout);
}

/// `policyhub rollback --restore` copies the target forward and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restore_copies_the_target_forward() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "team/limits", "1.0.0", json!({"max": 1}), true);
    release(&app, "team/limits", "2.0.0", json!({"max": 2}), true);
    let restore = [
        "rollback",
        "team/limits",
        "--restore",
        "--reason",
        "v2 broke",
    ];
    let table = policyhub(&app, &restore);
    assert_eq!(
        table.success().trim(),
        "restored team/limits version 1 as version 3 (was version 2) at revision 3"
    );
    let mut json_args = restore.to_vec();
    json_args.extend(["--to-version", "2", "--output", "json"]);
    let reply = policyhub(&app, &json_args).json();
    assert_eq!(
        (
            &reply["restoredFrom"],
            &reply["version"],
            &reply["previousVersion"]
        ),
        (&json!(2), &json!(4), &json!(3))
    );
}

/// Runs `policyhub ARGS` against `server` with its standard output closed
/// before it writes, as `| head` closes it once it has its lines, and
/// returns what the run wrote to standard error, failing the test unless
/// it ended quietly: exit 0 or killed by SIGPIPE, as Unix tools end.
fn into_a_closed_pipe(server: &str, args: &[&str]) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut child = client_command(&[("POLICYHUB_SERVER", server)], args)
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run policyhub");
    drop(child.stdout.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("policyhub {args:?} still runs with its reader gone");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "policyhub {args:?}: {:?}\n{stderr}",
        output.status
    );
    for noise in ["panicked", "backtrace", "Broken pipe", "broken pipe"] {
        assert!(!stderr.contains(noise), "policyhub {args:?}:\n{stderr}");
    }
    stderr
}

/// Every command that prints, its help included, ends quietly when its
/// reader goes away before it writes (`policyhub list-events | head`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_printing_command_ends_quietly_when_its_reader_goes_away() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    release(&app, "payments/limits", "1.1.0", json!({"max": 2}), false);
    let server = format!("http://{}", app.address);
    let dir = tempfile::tempdir().unwrap();
    let jwks = write(dir.path(), "jwks.json", &app.jwks_json().await);
    let bundle = policyhub(&app, &["get-active", "payments/limits", "-o", "json"]);
    let bundle = write(dir.path(), "bundle.json", bundle.success());
    let key = dir.path().join("key.pem").display().to_string();
    let secret = write(dir.path(), "secret", &"s".repeat(32));

    let reads: &[&[&str]] = &[
        &["get-active", "payments/limits"],
        &["get-version", "payments/limits", "--version", "1"],
        &["list-versions", "payments/limits"],
        &["list-policies"],
        &["list-events"],
        &["list-checkpoints"],
        &["list-runtimes", "payments"],
        &["get-policy-status", "payments/limits"],
        &["diff-versions", "payments/limits", "1", "2"],
        &["whoami", "payments"],
        &["get-signing-keys"],
        &["verify-log"],
        &["rollout", "list", "payments"],
        &["list-policy-schedules", "payments"],
        &["watch-active", "--namespace", "payments"],
    ];
    for read in reads {
        for output in ["table", "json"] {
            let args = [*read, &["-o", output]].concat();
            into_a_closed_pipe(&server, &args);
        }
    }
    into_a_closed_pipe(&server, &["export"]);
    into_a_closed_pipe(&server, &["health"]);

    let offline: &[&[&str]] = &[
        &["--help"],
        &["--version"],
        &["help", "list-events"],
        &["verify", "--jwks", &jwks, &bundle],
        &["generate-key", "--out", &key],
        &[
            "token",
            "--subject",
            "ci",
            "--role",
            "*:reader",
            "--secret-file",
            &secret,
        ],
    ];
    for args in offline {
        into_a_closed_pipe(&server, args);
    }
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        into_a_closed_pipe(&server, &["completion", shell]);
    }
    let mut every = vec![vec![]];
    let mut commands = vec![(
        vec![],
        <policyhub::cli::Cli as clap::CommandFactory>::command(),
    )];
    while let Some((path, command)) = commands.pop() {
        for sub in command.get_subcommands() {
            let mut sub_path: Vec<String> = path.clone();
            sub_path.push(sub.get_name().to_string());
            every.push(sub_path.clone());
            commands.push((sub_path, sub.clone()));
        }
    }
    for path in every {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        into_a_closed_pipe(&server, &args);
    }
}

/// `get-version` needs exactly one of `--version` and `--label`: without
/// either, or with both, it is a usage error with a hint, not a panic.
#[test]
fn get_version_without_exactly_one_selector_is_a_usage_error() {
    for args in [
        &["get-version", "payments/limits"][..],
        &[
            "get-version",
            "payments/limits",
            "--version",
            "1",
            "--label",
            "1.0.0",
        ],
    ] {
        let refused = policyhub_with(&[], args);
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(refused.stderr.contains("--label"), "{}", refused.stderr);
        assert!(refused.stderr.contains("hint:"), "{}", refused.stderr);
        assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
    }
}

/// Every command's help, by its path of subcommand names, and the long
/// flags of each command.
fn every_help() -> Vec<(String, String, Vec<String>)> {
    let mut root = <policyhub::cli::Cli as clap::CommandFactory>::command();
    root.build();
    let mut helps = Vec::new();
    let mut commands = vec![(String::from("policyhub"), root)];
    while let Some((path, mut command)) = commands.pop() {
        let flags = command
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_string))
            .chain(["help".to_string(), "version".to_string()])
            .collect();
        helps.push((path.clone(), command.render_long_help().to_string(), flags));
        for sub in command.get_subcommands() {
            commands.push((format!("{path} {}", sub.get_name()), sub.clone()));
        }
    }
    helps
}

/// A flag a help text names exists: on its own command, or, for a text
/// that points at another command (`policyhub list-events --limit N`), on
/// some command. A quoted command line of another program (`kubectl auth
/// can-i --list`) names that program's flags.
#[test]
fn every_flag_named_in_a_help_text_exists() {
    let helps = every_help();
    let anywhere: std::collections::BTreeSet<&String> =
        helps.iter().flat_map(|(_, _, flags)| flags).collect();
    let ours = |quoted: &str| {
        let program = quoted.split_whitespace().next().unwrap_or_default();
        program == "policyhub" || program.starts_with('-')
    };
    let mut missing = Vec::new();
    for (path, help, flags) in &helps {
        // Between backticks, odd pieces are quoted.
        let text: String = help
            .split('`')
            .enumerate()
            .filter(|(index, piece)| index % 2 == 0 || ours(piece))
            .map(|(_, piece)| format!("{piece} "))
            .collect();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("--") {
            rest = &rest[start + 2..];
            let flag: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if flag.is_empty() {
                continue;
            }
            if !flags.contains(&flag) && !anywhere.contains(&flag) {
                missing.push(format!("{path}: --{flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// `set-policy-schedule --help` prints its YAML example line by line, as
/// a file would hold it.
#[test]
fn the_schedule_example_keeps_its_lines() {
    let help = policyhub_with(&[], &["set-policy-schedule", "--help"]);
    let example: String = help
        .success()
        .lines()
        .skip_while(|line| line.trim() != "entries:")
        .take_while(|line| !line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    let parsed: Value = serde_yaml_ng::from_str(&example)
        .unwrap_or_else(|error| panic!("{error}: {}", help.stdout));
    let names: Vec<&str> = parsed["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {example}"))
        .iter()
        .map(|entry| entry["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["weekday", "weekend"], "{example}");
    assert_eq!(parsed["entries"][0]["timeZone"], "Europe/Berlin");
}

/// The naming rule the README states: a client command is its RPC's name
/// kebab-cased, or its summary names the RPC in parentheses (the rollout
/// and schedule commands, `whoami`), or it calls another service than
/// policyhub's (`health`), or it is more than one call (`sync`,
/// `verify-log`, and `agent`, a runtime).
#[test]
fn every_client_command_is_named_after_its_rpc_or_names_it() {
    let pool =
        prost_reflect::DescriptorPool::decode(policyhub::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();
    let rpcs: Vec<String> = pool
        .services()
        .flat_map(|service| {
            service
                .methods()
                .map(|method| method.name().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut root = <policyhub::cli::Cli as clap::CommandFactory>::command();
    root.build();
    let mut commands = vec![root];
    let mut unnamed = Vec::new();
    while let Some(command) = commands.pop() {
        commands.extend(command.get_subcommands().cloned());
        let is_client = command
            .get_arguments()
            .any(|arg| arg.get_long() == Some("server"));
        if !is_client || ["sync", "verify-log", "agent", "health"].contains(&command.get_name()) {
            continue;
        }
        let about = command.get_about().map(|about| about.to_string());
        let about = about.unwrap_or_default();
        let named = rpcs.iter().any(|rpc| {
            kebab(rpc) == command.get_name()
                || about.contains(&format!("({rpc})"))
                || about.contains(&format!("({rpc},"))
        });
        if !named {
            unnamed.push(format!("{}: {about}", command.get_name()));
        }
    }
    assert!(unnamed.is_empty(), "{}", unnamed.join("\n"));
}

/// The kebab-cased name of an RPC, as its command is named.
fn kebab(name: &str) -> String {
    let mut kebab = String::new();
    for (index, letter) in name.chars().enumerate() {
        if letter.is_ascii_uppercase() && index > 0 {
            kebab.push('-');
        }
        kebab.push(letter.to_ascii_lowercase());
    }
    kebab
}

/// Every command of the tree, by its path of names (`rollout start`).
fn every_command() -> Vec<(String, clap::Command)> {
    let mut root = <policyhub::cli::Cli as clap::CommandFactory>::command();
    root.build();
    let mut found = Vec::new();
    let mut commands: Vec<(String, clap::Command)> = root
        .get_subcommands()
        .map(|sub| (sub.get_name().to_owned(), sub.clone()))
        .collect();
    while let Some((path, command)) = commands.pop() {
        for sub in command.get_subcommands() {
            commands.push((format!("{path} {}", sub.get_name()), sub.clone()));
        }
        found.push((path, command));
    }
    found
}

/// The guide's promise, from the API's side: every RPC of policyhub's
/// services has a client command, found by the naming rule (its name
/// kebab-cased, or named in a summary's parentheses), so that a new RPC
/// without one fails here. The exceptions are the RPCs only runtimes make:
/// a runtime reports what it applied of the bundles it follows (`policyhub
/// agent` does, as the runtime it is), and a command for people would
/// forge that report.
#[test]
fn every_rpc_has_a_client_command() {
    const RUNTIMES_ONLY: [&str; 4] = [
        "ReportStatus",
        "ReportStatusStream",
        "ReportOpaStatus",
        "UploadOpaDecisions",
    ];
    let pool =
        prost_reflect::DescriptorPool::decode(policyhub::grpc::proto::FILE_DESCRIPTOR_SET).unwrap();
    let commands = every_command();
    let mut rpcs = 0;
    let mut missing = Vec::new();
    for service in pool
        .services()
        .filter(|service| service.package_name() == "policyhub.v1")
    {
        for method in service.methods() {
            rpcs += 1;
            let rpc = method.name();
            let found = commands.iter().any(|(_, command)| {
                let about = command.get_about().map(|about| about.to_string());
                let about = about.unwrap_or_default();
                command.get_name() == kebab(rpc)
                    || about.contains(&format!("({rpc})"))
                    || about.contains(&format!("({rpc},"))
            });
            if found == RUNTIMES_ONLY.contains(&rpc) {
                missing.push(format!(
                    "{}/{rpc}: {}",
                    service.name(),
                    if found {
                        "has a command: take it off the exceptions"
                    } else {
                        "no command calls it"
                    }
                ));
            }
        }
    }
    assert!(rpcs > 50, "only {rpcs} RPCs read from the descriptors");
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The guide's other promise: every client command, one that takes
/// `--server`, takes `-o`/`--output` too. The exception is `agent`, a
/// runtime that serves what it follows and logs: it prints no reply.
#[test]
fn every_client_command_takes_output() {
    const NO_REPLY: [&str; 1] = ["agent"];
    let mut clients = 0;
    let mut without = Vec::new();
    for (path, command) in every_command() {
        let takes = |long: &str| {
            command
                .get_arguments()
                .any(|arg| arg.get_long() == Some(long))
        };
        if !takes("server") {
            continue;
        }
        clients += 1;
        let output = command
            .get_arguments()
            .any(|arg| arg.get_long() == Some("output") && arg.get_short() == Some('o'));
        if output == NO_REPLY.contains(&path.as_str()) {
            without.push(path);
        }
    }
    assert!(clients > 50, "only {clients} client commands found");
    assert!(
        without.is_empty(),
        "these take -o/--output where they should not, or lack it: {}",
        without.join(", ")
    );
}

/// `health -o json` prints the HealthCheckResponse as grpcurl does, in the
/// protobuf JSON mapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_prints_its_reply_as_grpcurl_does() {
    let app = spawn_app(Backend::Sqlite).await;
    let serving = policyhub(&app, &["health", "-o", "json"]);
    assert_eq!(serving.json(), json!({"status": "SERVING"}));
    let liveness = policyhub(
        &app,
        &[
            "health",
            "--service",
            "policyhub.liveness",
            "--output",
            "json",
        ],
    );
    assert_eq!(liveness.json(), json!({"status": "SERVING"}));
}

/// `get-restore-proof` against a real server: refused as not found (exit
/// 1) while the log records no restore; once `record-restore` has, the RESTORED event
/// with its inclusion proof, as JSON and as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_restore_proof_proves_the_recorded_restore() {
    let app = spawn_app(Backend::Sqlite).await;
    release(&app, "payments/limits", "1.0.0", json!({"max": 1}), true);
    let none = policyhub(&app, &["get-restore-proof"]);
    assert_eq!(none.code, 1, "{}{}", none.stdout, none.stderr);
    assert!(
        none.stderr.contains("no restore is recorded"),
        "{}",
        none.stderr
    );

    let reason = "restored last night's backup";
    let recorded = policyhub(&app, &["record-restore", "--reason", reason, "-o", "json"]).json();
    let proof = policyhub(&app, &["get-restore-proof", "-o", "json"]).json();
    let proven = &proof["proof"];
    assert_eq!(proven["event"]["kind"], "EVENT_KIND_RESTORED", "{proof}");
    assert_eq!(proven["event"]["id"], recorded["event"]["id"], "{proof}");
    assert!(
        proven["canonicalEvent"].as_str().unwrap().contains(reason),
        "{proof}"
    );
    let tree_size: u64 = proven["treeSize"].as_str().unwrap().parse().unwrap();
    assert!(
        proven["hashes"]
            .as_array()
            .is_some_and(|hashes| !hashes.is_empty()),
        "{proof}"
    );

    let in_tree = policyhub(
        &app,
        &["get-restore-proof", "--tree-size", &tree_size.to_string()],
    );
    let text = in_tree.success();
    assert!(
        text.starts_with(&format!(
            "event {}: leaf ",
            recorded["event"]["id"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("of a tree of {tree_size}")),
        "{text}"
    );
    assert!(text.contains(reason), "{text}");
}

/// `policyhub health` answers as a probe: exit 0 and SERVING from a
/// serving server, 1 for a service it does not know; over TLS with
/// `--tls-no-verify`, presenting a client certificate to an mTLS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_as_a_probe_in_plaintext_tls_and_mtls() {
    let app = spawn_app(Backend::Sqlite).await;
    let serving = policyhub(&app, &["health"]);
    assert_eq!(serving.success().trim(), "SERVING");
    let liveness = policyhub(&app, &["health", "--service", "policyhub.liveness"]);
    assert_eq!(liveness.success().trim(), "SERVING");
    let unknown = policyhub(&app, &["health", "--service", "no.such.Service"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);

    let dir = tempfile::tempdir().unwrap();
    crate::auth::certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut settings = crate::helpers::test_settings(&database);
    settings.tls = Some(policyhub::config::TlsSettings {
        cert_file: dir.path().join("server.crt"),
        key_file: dir.path().join("server.key"),
        client_ca_file: Some(dir.path().join("ca.crt")),
    });
    let application = policyhub::startup::Application::build(settings)
        .await
        .unwrap();
    let server = format!("https://{}", application.address());
    tokio::spawn(async move {
        let _database = database;
        application.run_until_stopped(std::future::pending()).await
    });
    let probe = |extra: &[&str]| {
        let mut args = vec!["health", "--tls-no-verify"];
        args.extend_from_slice(extra);
        policyhub_at(&server, &args)
    };
    let (cert, key) = (path("client.crt"), path("client.key"));
    let mtls = probe(&["--cert-file", &cert, "--key-file", &key]);
    assert_eq!(mtls.success().trim(), "SERVING", "{}", mtls.stderr);
    let without_certificate = probe(&[]);
    assert_ne!(
        without_certificate.code, 0,
        "{}",
        without_certificate.stdout
    );
    // Without --tls-no-verify the server's certificate must verify: its CA
    // is not one the client knows.
    let verified = policyhub_at(
        &server,
        &["health", "--cert-file", &cert, "--key-file", &key],
    );
    assert_eq!(verified.code, 3, "{}", verified.stderr);
}

/// `policyhub serve` refuses to start on a `POLICYHUB_*` variable that
/// names an unknown section or key, or holds a value that does not parse,
/// and says which variable.
#[test]
fn serve_refuses_an_unknown_or_invalid_setting_variable_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (variable, value) in [
        ("POLICYHUB_BOGUS__X", "1"),
        ("POLICYHUB_AUDIT__CHECKPOINT_INTERVAL", "often"),
    ] {
        let refused = Command::new(policyhub_binary())
            .args([
                "serve",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{variable}: {stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}
