//! `policyhub sync` on generated git checkouts: what is delivered, skipped
//! and refused, atomic activation, dry runs, and a re-run after the server
//! went away halfway.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use policyhub::grpc::proto;
use serde_json::{Value, json};

use crate::cli::{Run, policyhub};
use crate::helpers::{
    Backend, TestApp, TestDatabase, policyhub_binary, spawn_app, spawn_on, state_name,
};

/// A git repository holding `policies/<name>/v<label>/`.
struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Self {
        let checkout = Checkout {
            dir: tempfile::tempdir().unwrap(),
        };
        checkout.git(&["init", "--quiet"]);
        checkout
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .expect("run git");
        assert!(status.success(), "git {args:?}");
    }

    /// Writes one release: its metadata and its YAML body.
    fn release(&self, namespace: &str, name: &str, label: &str, body_yaml: &str) {
        let dir = self
            .path()
            .join("policies")
            .join(name)
            .join(format!("v{label}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("metadata.json"),
            format!(r#"{{"namespace": "{namespace}", "description": "{name} {label}", "owner": "team"}}"#),
        )
        .unwrap();
        std::fs::write(dir.join("policy-definition.yaml"), body_yaml).unwrap();
    }

    /// Adds `requirements` (name to range) to a written release's metadata.
    fn require(&self, name: &str, label: &str, requirements: Value) {
        let file = self
            .path()
            .join("policies")
            .join(name)
            .join(format!("v{label}"))
            .join("metadata.json");
        let mut metadata: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        metadata["requirements"] = requirements;
        std::fs::write(file, metadata.to_string()).unwrap();
    }

    fn commit(&self) {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--message", "policies"]);
    }

    /// `policyhub sync DIR ARGS --output json` against `app`.
    fn sync(&self, app: &TestApp, args: &[&str]) -> (Run, Value) {
        let dir = self.path().display().to_string();
        let mut all = vec!["sync", dir.as_str(), "--output", "json"];
        all.extend(args);
        let run = policyhub(app, &all);
        let report = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        (run, report)
    }
}

/// `label: (version, state)` of every version of a policy, oldest first.
async fn versions(app: &TestApp, namespace: &str, name: &str) -> Vec<(String, u32, &'static str)> {
    let mut versions: Vec<_> = app
        .versions(namespace, name)
        .await
        .iter()
        .map(|version| (version.label.clone(), version.version, state_name(version)))
        .collect();
    versions.reverse();
    versions
}

fn count(report: &Value, outcome: &str) -> u64 {
    report[outcome]
        .as_u64()
        .unwrap_or_else(|| panic!("{outcome} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_publishes_every_release_and_a_second_publishes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    checkout.release("payments", "limits", "1.10.0", "max: 10\n");
    checkout.release("payments", "limits", "1.2.0", "max: 2\n");
    checkout.release("web", "flags", "0.1.0", "dark: true\nbeta: [a, b]\n");
    checkout.commit();

    let (first, report) = checkout.sync(&app, &[]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(
        (count(&report, "delivered"), count(&report, "skipped")),
        (4, 0)
    );
    let commit = report["commit"]
        .as_str()
        .expect("a git checkout has a commit");
    assert_eq!(
        versions(&app, "payments", "limits").await,
        [
            ("1.0.0".to_owned(), 1, "PUBLISHED"),
            ("1.2.0".to_owned(), 2, "PUBLISHED"),
            ("1.10.0".to_owned(), 3, "PUBLISHED"),
        ],
        "published in semantic-version order"
    );
    let flags = &app.versions("web", "flags").await[0];
    assert!(
        flags.change_notes.starts_with("flags 0.1.0"),
        "{}",
        flags.change_notes
    );
    assert!(
        flags.change_notes.contains(commit),
        "{}",
        flags.change_notes
    );
    assert!(
        app.get_active("payments", "limits").await.is_err(),
        "nothing is activated without --activate"
    );

    let before = app.db_state().await;
    let (second, report) = checkout.sync(&app, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        (count(&report, "delivered"), count(&report, "skipped")),
        (0, 4)
    );
    assert_eq!(app.db_state().await, before, "a second sync writes nothing");

    let table = policyhub(&app, &["sync", &checkout.path().display().to_string()]);
    assert!(
        table.success().ends_with(&format!(
            "sync of commit {commit}: 0 delivered, 4 skipped, 0 failed\n"
        )),
        "{}",
        table.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_release_is_refused_naming_its_file_and_nothing_is_published() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    checkout.commit();
    assert_eq!(checkout.sync(&app, &[]).0.code, 0);

    checkout.release("payments", "limits", "1.0.0", "max: 1000\n");
    checkout.release("payments", "limits", "1.1.0", "max: 2\n");
    checkout.commit();
    let (refused, _) = checkout.sync(&app, &[]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("policies/limits/v1.0.0/policy-definition.yaml: released versions are immutable; bump the version"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        versions(&app, "payments", "limits").await.len(),
        1,
        "1.1.0 was not published either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_checkout_publishes_nothing_and_names_every_bad_file() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    checkout.release("Payments", "bad-namespace", "1.0.0", "max: 1\n");
    checkout.release("payments", "not-an-object", "1.0.0", "- 1\n- 2\n");
    checkout.release("payments", "broken-yaml", "1.0.0", "max: [1\n");
    checkout.release("payments", "two-namespaces", "1.0.0", "max: 1\n");
    checkout.release("billing", "two-namespaces", "1.1.0", "max: 1\n");
    std::fs::create_dir_all(checkout.path().join("policies/limits/1.1.0")).unwrap();
    checkout.commit();

    let (refused, _) = checkout.sync(&app, &[]);
    assert_eq!(refused.code, 1);
    for file in [
        "policies/bad-namespace/v1.0.0/metadata.json: namespace",
        "policies/not-an-object/v1.0.0/policy-definition.yaml: body: must be a JSON object, got an array",
        "policies/broken-yaml/v1.0.0/policy-definition.yaml is not YAML",
        "policies/two-namespaces/v1.1.0/metadata.json: namespace \"billing\" differs",
        "policies/limits/1.1.0: a release directory is named v<semver>",
    ] {
        assert!(
            refused.stderr.contains(file),
            "{file} in {}",
            refused.stderr
        );
    }
    let policies = policyhub(&app, &["policies", "--output", "json"]).json();
    assert_eq!(policies["policies"], Value::Null, "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_moves_every_policy_to_its_newest_release_under_one_revision() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    checkout.release("payments", "limits", "1.1.0", "max: 2\n");
    checkout.release("web", "flags", "0.1.0", "dark: true\n");
    checkout.commit();

    let (run, report) = checkout.sync(&app, &["--activate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let revision = report["activation"]["revision"].as_u64().unwrap();
    let limits = app.get_active("payments", "limits").await.unwrap();
    let flags = app.get_active("web", "flags").await.unwrap();
    assert_eq!(
        (limits.label.as_str(), flags.label.as_str()),
        ("1.1.0", "0.1.0")
    );
    assert_eq!((limits.revision, flags.revision), (revision, revision));
    let activations = app.events("payments", "limits").await;
    assert_eq!(
        activations
            .iter()
            .filter(|event| event.revision != 0)
            .count(),
        1,
        "1.0.0 was never active on its own"
    );

    let before = app.db_state().await;
    let (again, _) = checkout.sync(&app, &["--activate"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        app.db_state().await,
        before,
        "already active: no new revision"
    );
}

/// A release requiring another policy's release is published after it
/// (whatever the names' order) and activated with it in one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_from_metadata_publish_in_order_and_activate_together() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("team", "api-gateway", "2.0.0", "routes: 2\n");
    checkout.require("api-gateway", "2.0.0", json!({"discovery": ">=2.0.0, <3"}));
    checkout.release("team", "discovery", "2.0.0", "zones: 2\n");
    checkout.commit();

    let (run, report) = checkout.sync(&app, &["--activate"]);
    assert_eq!(run.code, 0, "{}\n{report}", run.stderr);
    let revision = report["activation"]["revision"].as_u64().unwrap();
    let gateway = app.get_active("team", "api-gateway").await.unwrap();
    let discovery = app.get_active("team", "discovery").await.unwrap();
    assert_eq!((gateway.revision, discovery.revision), (revision, revision));
    let version = app
        .policy
        .clone()
        .get_version(proto::GetVersionRequest {
            namespace: "team".into(),
            name: "api-gateway".into(),
            selector: Some(proto::get_version_request::Selector::Version(1)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        version.requirements,
        vec![proto::Requirement {
            name: "discovery".into(),
            range: ">=2.0.0, <3".into(),
        }]
    );
}

/// A release whose requirement nothing published meets is refused at
/// publish time, and the hint asks for the missing release, not for
/// activations in another order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_requiring_an_unpublished_range_is_refused_with_a_publish_hint() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("team", "discovery", "1.0.0", "zones: 1\n");
    checkout.release("team", "gateway", "2.0.0", "routes: 2\n");
    checkout.require("gateway", "2.0.0", json!({"discovery": "^2"}));
    checkout.commit();

    let run = policyhub(&app, &["sync", &checkout.path().display().to_string()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("discovery has no published release in ^2"),
        "{}",
        run.stderr
    );
    let hint = run
        .stderr
        .lines()
        .find(|line| line.starts_with("hint:"))
        .unwrap_or_else(|| panic!("a hint: {}", run.stderr));
    assert!(
        hint.contains("publish a release of the required policy inside the range"),
        "{hint}"
    );
    assert!(!hint.contains("activate"), "{hint}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_the_plan_and_changes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let checkout = Checkout::new();
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    checkout.commit();
    assert_eq!(checkout.sync(&app, &[]).0.code, 0);
    checkout.release("payments", "limits", "1.1.0", "max: 2\n");
    checkout.commit();

    let before = app.db_state().await;
    let (run, report) = checkout.sync(&app, &["--dry-run", "--activate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let outcomes: Vec<(&str, &str)> = report["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|release| {
            (
                release["label"].as_str().unwrap(),
                release["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("1.0.0", "skipped"), ("1.1.0", "planned")]);
    // The JSON carries the plan the text shows.
    assert_eq!(
        (&report["planned"], &report["skipped"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        report["activation"]["planned"],
        json!([{"namespace": "payments", "name": "limits", "label": "1.1.0"}])
    );
    let table = policyhub(
        &app,
        &[
            "sync",
            &checkout.path().display().to_string(),
            "--dry-run",
            "--activate",
        ],
    );
    let text = table.success();
    assert!(
        text.contains("would publish payments/limits 1.1.0 from "),
        "{text}"
    );
    assert!(
        text.contains("would activate payments/limits@1.1.0"),
        "{text}"
    );
    assert_eq!(app.db_state().await, before, "a dry run writes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_outside_git_or_with_uncommitted_changes_syncs_with_digest_keys() {
    let app = spawn_app(Backend::Sqlite).await;
    let plain = tempfile::tempdir().unwrap();
    let checkout = Checkout { dir: plain };
    checkout.release("payments", "limits", "1.0.0", "max: 1\n");
    let (run, report) = checkout.sync(&app, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        (report["commit"].clone(), count(&report, "delivered")),
        (Value::Null, 1)
    );

    let repository = Checkout::new();
    repository.release("payments", "limits", "1.0.0", "max: 1\n");
    repository.commit();
    repository.release("payments", "limits", "1.1.0", "max: 2\n");
    let (dirty, report) = repository.sync(&app, &[]);
    assert_eq!(dirty.code, 0, "{}", dirty.stderr);
    assert_eq!(
        report["commit"],
        Value::Null,
        "uncommitted changes name no commit"
    );
    assert_eq!(
        (count(&report, "delivered"), count(&report, "skipped")),
        (1, 1)
    );
}

/// How many versions of payments/limits are published; none while the
/// policy does not exist yet.
async fn published(app: &TestApp) -> usize {
    let request = proto::ListVersionsRequest {
        namespace: "payments".into(),
        name: "limits".into(),
        page_size: 500,
        page_token: String::new(),
    };
    match app.policy.clone().list_versions(request).await {
        Ok(page) => page
            .into_inner()
            .versions
            .iter()
            .filter(|version| state_name(version) == "PUBLISHED")
            .count(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_cut_short_by_a_stopped_server_resumes_with_exactly_the_missing_releases() {
    const RELEASES: usize = 6;
    let checkout = Checkout::new();
    for minor in 0..RELEASES {
        checkout.release(
            "payments",
            "limits",
            &format!("1.{minor}.0"),
            &format!("max: {minor}\n"),
        );
    }
    checkout.commit();

    // Two mutations a second: sync publishes one release at once, then one
    // a second, waiting out the quota, which leaves time to stop the server
    // in the middle.
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.quotas.mutations_per_second = 2.0;
        settings.quotas.mutation_burst = 2.0;
    })
    .await;
    let first = Command::new(policyhub_binary())
        .args(["sync", "--output", "json"])
        .arg(checkout.path())
        .env("POLICYHUB_SERVER", format!("http://{}", app.address))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while published(&app).await < 2 {
        assert!(
            Instant::now() < deadline,
            "sync published two releases in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let database = app.stop().await;
    let first = tokio::task::spawn_blocking(move || first.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(3),
        "the server went away: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: Value = serde_json::from_slice(&first.stdout).unwrap();
    let delivered_first = count(&report, "delivered") as usize;
    assert!((2..RELEASES).contains(&delivered_first), "{report}");
    assert_eq!(count(&report, "failed"), 1, "{report}");

    let app = spawn_on(database, |_| {}).await;
    let (second, report) = checkout.sync(&app, &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        count(&report, "delivered") as usize,
        RELEASES - delivered_first
    );
    assert_eq!(count(&report, "skipped") as usize, delivered_first);
    let all = versions(&app, "payments", "limits").await;
    let expected: Vec<(String, u32, &str)> = (0..RELEASES)
        .map(|minor| (format!("1.{minor}.0"), minor as u32 + 1, "PUBLISHED"))
        .collect();
    assert_eq!(
        all, expected,
        "every release exactly once, and no stray draft"
    );
}
