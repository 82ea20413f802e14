//! Export and import: a namespace with a thousand versions, requirements, a
//! schema, rollouts and key rotations leaves a SQLite deployment as one
//! archive and arrives in a PostgreSQL one unchanged: its versions, its
//! events, what was active at every past revision, every signature. An
//! import into a namespace that is not empty, and an archive cut short or
//! altered, are refused with nothing written. A whole-log archive names its
//! log's origin; its notes never verify as the importing deployment's log.

use std::time::Duration;

use policyhub::grpc::{convert::json_to_struct, proto};
use policyhub_runtime::bundle::{Jwks, verify};
use serde_json::json;
use tonic::Code;

use crate::cli::policyhub;
use crate::helpers::{Backend, TestApp, TestDatabase, spawn_app, spawn_on};
use crate::rollouts::{start_request, step};

/// A history worth moving: two policies of namespace team, one requiring
/// the other, a schema, a thousand versions, activations, a completed and
/// an aborted rollout, and two key rotations along the way.
async fn history(app: &TestApp) {
    app.policy
        .clone()
        .set_schema(proto::SetSchemaRequest {
            namespace: "team".into(),
            name: "limits".into(),
            schema: Some(json_to_struct(&json!({"type": "object"}))),
            ..Default::default()
        })
        .await
        .unwrap();
    for version in 1..=990 {
        app.draft("team", "limits", json!({"max": version})).await;
        let label = format!("1.{version}.0");
        app.publish("team", "limits", &label, version % 50 == 1)
            .await;
        if version % 330 == 0 {
            app.policy
                .clone()
                .rotate_signing_key(proto::RotateSigningKeyRequest {
                    reason: format!("rotation at version {version}"),
                })
                .await
                .unwrap();
        }
    }
    for version in 1..=9 {
        app.policy
            .clone()
            .draft(proto::DraftRequest {
                namespace: "team".into(),
                name: "quota".into(),
                body: Some(json_to_struct(&json!({"per": version}))),
                requirements: vec![proto::Requirement {
                    name: "limits".into(),
                    range: ">=1.0.0".into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        app.publish("team", "quota", "", version % 3 == 0).await;
    }
    app.draft("team", "quota", json!({"per": 10})).await;
    let rollout = start_rollout(app, 990, 951).await;
    app.policy
        .clone()
        .promote_rollout(control(&rollout))
        .await
        .unwrap();
    let rollout = start_rollout(app, 989, 990).await;
    app.policy
        .clone()
        .abort_rollout(control(&rollout))
        .await
        .unwrap();
}

/// Starts a rollout of limits to `version` from `active`; its id.
async fn start_rollout(app: &TestApp, version: u32, active: u32) -> String {
    let mut request = start_request(vec![step(50, Duration::from_secs(3600))]);
    request.targets[0].selector = Some(proto::rollout_target_request::Selector::Version(version));
    request.targets[0].expected_active_version = Some(active);
    app.policy
        .clone()
        .start_rollout(request)
        .await
        .unwrap()
        .into_inner()
        .id
}

fn control(id: &str) -> proto::RolloutControlRequest {
    proto::RolloutControlRequest {
        namespace: "team".into(),
        id: id.into(),
        reason: "archive test".into(),
    }
}

/// Every event, oldest first, without what a deployment gives it (its id
/// and its link in that deployment's chain).
async fn events(app: &TestApp) -> Vec<proto::Event> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .policy
            .clone()
            .list_events(proto::ListEventsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events.into_iter().map(|event| proto::Event {
            id: 0,
            hash: String::new(),
            ..event
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.reverse();
    all
}

async fn versions(app: &TestApp) -> Vec<proto::Version> {
    let mut all = Vec::new();
    for name in ["limits", "quota"] {
        let mut page_token = String::new();
        loop {
            let page = app
                .policy
                .clone()
                .list_versions(proto::ListVersionsRequest {
                    namespace: "team".into(),
                    name: name.into(),
                    page_size: 500,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            all.extend(page.versions);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
    }
    all
}

/// What each policy had active at every revision up to `last`: the
/// version and its bundle, or the code of the refusal.
async fn active_at_every_revision(app: &TestApp, last: u64) -> Vec<Result<(u32, String), Code>> {
    let mut answers = Vec::new();
    for revision in 1..=last {
        for name in ["limits", "quota"] {
            let answer = app
                .bundle
                .clone()
                .get_active(proto::GetActiveRequest {
                    namespace: "team".into(),
                    name: name.into(),
                    as_of: Some(proto::get_active_request::AsOf::AsOfRevision(revision)),
                    ..Default::default()
                })
                .await;
            answers.push(
                answer
                    .map(|bundle| {
                        let bundle = bundle.into_inner();
                        (bundle.version, bundle.jws)
                    })
                    .map_err(|status| status.code()),
            );
        }
    }
    answers
}

async fn revision(app: &TestApp) -> u64 {
    app.get_active("team", "limits").await.unwrap().revision
}

/// Runs `policyhub import` of `archive` against `app`.
fn import(app: &TestApp, archive: &[u8]) -> crate::cli::Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl");
    std::fs::write(&file, archive).unwrap();
    policyhub(app, &["import", &file.display().to_string()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_versions_move_from_sqlite_to_postgres_unchanged() {
    let source = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.quotas.mutations_per_second = 100_000.0;
        settings.quotas.mutation_burst = 100_000.0;
    })
    .await;
    history(&source).await;
    let exported = policyhub(&source, &["export"]);
    let archive = exported.success().as_bytes().to_vec();
    assert!(archive.len() > 100_000, "{} bytes", archive.len());
    let offline = tempfile::tempdir().unwrap();
    let file = offline.path().join("archive.jsonl");
    std::fs::write(&file, &archive).unwrap();
    let verified = policyhub(&source, &["verify-log", "-f", &file.display().to_string()]);
    assert!(
        verified.success().contains("signed checkpoints hold"),
        "the archive proves itself offline: {}",
        verified.stdout
    );

    let target = spawn_app(Backend::Postgres).await;
    let imported = import(&target, &archive);
    assert!(
        imported
            .success()
            .contains("imported 2 policies, 1000 versions"),
        "{}",
        imported.stdout
    );

    assert_eq!(versions(&target).await, versions(&source).await);
    let (source_events, target_events) = (events(&source).await, events(&target).await);
    let after_import = target_events
        .iter()
        .position(|event| event.kind == proto::EventKind::Imported as i32)
        .expect("the import is an event")
        + 1;
    assert_eq!(target_events[after_import..], source_events[..]);
    let last = revision(&source).await;
    assert_eq!(
        revision(&target).await,
        last,
        "revisions of a fresh target are the source's"
    );
    assert_eq!(
        active_at_every_revision(&target, last).await,
        active_at_every_revision(&source, last).await
    );
    let jwks: Jwks = serde_json::from_str(&target.jwks_json().await).unwrap();
    let published: Vec<_> = versions(&target)
        .await
        .into_iter()
        .filter(|version| !version.jws.is_empty())
        .collect();
    assert_eq!(published.len(), 999);
    for version in &published {
        verify(&version.jws, &jwks).expect("every bundle verifies against the target's keys");
    }
    let verified = policyhub(&target, &["verify-log"]);
    assert!(
        verified.success().contains("signed checkpoints hold"),
        "{}",
        verified.stdout
    );

    // New versions are the target's: the next number, its own key.
    // (quota's requirement came along: limits stays on a release label)
    target.draft("team", "limits", json!({"max": 991})).await;
    let next = target
        .publish("team", "limits", "1.991.0", true)
        .await
        .version
        .unwrap();
    let keys = target
        .bundle
        .clone()
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (next.version, next.key_id.as_str()),
        (991, keys.signing_key_id.as_str())
    );
    assert!(
        published
            .iter()
            .all(|version| version.key_id != keys.signing_key_id),
        "the source's keys signed the history, the target's signs what comes next"
    );

    // Into a namespace that is not empty: refused, nothing written.
    let before = target.db_state().await;
    let again = import(&target, &archive);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("namespace team is not empty"),
        "{}",
        again.stderr
    );
    assert_eq!(target.db_state().await, before);
}

/// An archive cut short or altered anywhere is refused before anything of
/// it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_cut_short_or_altered_is_refused_and_nothing_is_written() {
    let source = spawn_app(Backend::Sqlite).await;
    for version in 1..=3 {
        source
            .release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let archive = policyhub(&source, &["export", "team"]).success().to_owned();
    let target = spawn_on(TestDatabase::new(Backend::Sqlite).await, |_| {}).await;
    let before = target.db_state().await;

    let lines: Vec<&str> = archive.lines().collect();
    let cut = lines[..lines.len() - 1].join("\n") + "\n";
    let altered = archive.replacen("\"max\":2", "\"max\":20", 1);
    assert_ne!(altered, archive);
    let mut half = archive.clone();
    half.truncate(archive.len() / 2);
    for (what, text, says) in [
        ("the trailer dropped", cut.as_str(), "cut short"),
        ("cut mid-line", half.as_str(), "cut short"),
        ("a body altered", altered.as_str(), "altered"),
        (
            "not an archive",
            "{\"events\": []}\n",
            "its last line is not a trailer",
        ),
    ] {
        let run = import(&target, text.as_bytes());
        assert_eq!(run.code, 1, "{what}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(says), "{what}: {}", run.stderr);
        assert_eq!(target.db_state().await, before, "{what}: nothing written");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("altered.jsonl");
    std::fs::write(&file, &altered).unwrap();
    let offline = policyhub(&target, &["verify-log", "-f", &file.display().to_string()]);
    assert_eq!(offline.code, 1, "{}", offline.stdout);
    assert!(offline.stderr.contains("altered"), "{}", offline.stderr);
    let loaded = import(&target, archive.as_bytes());
    assert!(
        loaded.success().contains("imported 1 policies, 3 versions"),
        "{}",
        loaded.stdout
    );
}

/// `archive` with its lines changed by `edit`, its trailer sealing them
/// anew: an archive whose change only its own checks can find.
pub(crate) fn resealed(archive: &str, edit: impl Fn(&mut Vec<serde_json::Value>)) -> String {
    let mut lines: Vec<serde_json::Value> = archive
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut trailer = lines.pop().unwrap();
    edit(&mut lines);
    let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
    use sha2::Digest as _;
    trailer["trailer"]["sha256"] = json!(format!("{:x}", sha2::Sha256::digest(body.as_bytes())));
    format!("{body}{trailer}\n")
}

/// A whole-log archive names its log's origin, and verify-log -f checks its
/// checkpoints' notes under it against the tree of its events. Imported
/// elsewhere, its notes stay the source log's: the target keeps its own
/// origin, and they do not verify as the target's log, whatever keys the
/// target learned from the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_names_its_log_and_its_notes_never_verify_as_another_deployments() {
    let source = spawn_app(Backend::Sqlite).await;
    for version in 1..=3 {
        source
            .release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let (origin, ..) = crate::log_tree::signed_tree(&source).await;
    let archive = policyhub(&source, &["export"]).success().to_owned();
    let header: serde_json::Value = serde_json::from_str(archive.lines().next().unwrap()).unwrap();
    assert_eq!(header["header"]["logOrigin"], json!(origin));
    let dir = tempfile::tempdir().unwrap();
    let verify_offline = |text: &str| {
        let file = dir.path().join("archive.jsonl");
        std::fs::write(&file, text).unwrap();
        policyhub(&source, &["verify-log", "-f", &file.display().to_string()])
    };
    verify_offline(&archive).success();
    let renamed = resealed(&archive, |lines| {
        lines[0]["header"]["logOrigin"] = json!("policy.example.com/log");
    });
    let run = verify_offline(&renamed);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("not of \"policy.example.com/log\""),
        "{}",
        run.stderr
    );
    let regrown = resealed(&archive, |lines| {
        let checkpoint = lines
            .iter_mut()
            .rev()
            .find(|line| line.get("checkpoint").is_some())
            .unwrap();
        let note = checkpoint["checkpoint"]["note"]
            .as_str()
            .unwrap()
            .to_owned();
        let size = note.lines().nth(1).unwrap().to_owned();
        let other = (size.parse::<u64>().unwrap() - 1).to_string();
        checkpoint["checkpoint"]["note"] =
            json!(note.replacen(&format!("\n{size}\n"), &format!("\n{other}\n"), 1));
    });
    let run = verify_offline(&regrown);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("does not verify"), "{}", run.stderr);

    let target = spawn_app(Backend::Sqlite).await;
    import(&target, archive.as_bytes()).success();
    let (target_origin, ..) = crate::log_tree::signed_tree(&target).await;
    assert_ne!(target_origin, origin, "the target keeps its own log");
    policyhub(&target, &["verify-log"]).success();
    let keys = policyhub(&target, &["get-signing-keys", "-o", "json"]);
    let as_target = crate::log_tree::Verifier::trusting(keys.success(), &target_origin);
    let as_source = crate::log_tree::Verifier::trusting(keys.success(), &origin);
    for line in archive
        .lines()
        .filter(|line| line.contains("\"checkpoint\""))
    {
        let checkpoint: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = as_target.keep("note.json", &checkpoint["checkpoint"]);
        as_target.refuses(
            &target_origin,
            &["note", &file],
            &format!("no known key of {target_origin} signed the note"),
        );
        as_source.accepts(&["note", &file]);
    }
}
