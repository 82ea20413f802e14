//! The event log as a Merkle tree: every checkpoint also signs a C2SP note
//! of the tree whose origin line names this deployment's log; an event's
//! inclusion and a tree's consistency with an older one are proven over
//! gRPC, HTTP and the CLI and check against those notes; events written
//! before the tree are appended at start to the tree they would have made.

use base64::Engine as _;
use policyhub::grpc::proto;
use policyhub::grpc::watch_message::WatchActiveResponse;
use prost::Message as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::Hash;

use crate::cli::policyhub;
use crate::helpers::{Backend, TestApp, TestDatabase, bundles_of, next_message, spawn_on};
use crate::http::curl;

crate::on_both_backends!(
    every_event_is_proven_in_the_signed_tree_and_every_tree_extends_the_last,
    each_watch_message_proves_its_tree_extends_the_one_carried_before,
    verify_log_recomputes_the_tree_and_refuses_notes_the_events_do_not_make,
);

/// The verifiers of the server's keys under `origin`.
async fn verifiers(app: &TestApp, origin: &str) -> VerifierList {
    let keys = app
        .bundle
        .clone()
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    VerifierList::new(
        keys.keys
            .iter()
            .map(|key| {
                let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(&key.x)
                    .unwrap();
                let vkey =
                    policyhub::signing::verifier_key(origin, &public.try_into().unwrap()).unwrap();
                Box::new(StandardVerifier::new(&vkey).unwrap()) as _
            })
            .collect(),
    )
}

/// The newest checkpoint's note, its signature verified: origin, size, root.
pub(crate) async fn signed_tree(app: &TestApp) -> (String, u64, Hash) {
    let checkpoints = app
        .policy
        .clone()
        .list_checkpoints(proto::ListCheckpointsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    verified_tree(app, &checkpoints[0]).await
}

/// The origin, size and root of a checkpoint's note, its signature
/// verified.
async fn verified_tree(app: &TestApp, checkpoint: &proto::Checkpoint) -> (String, u64, Hash) {
    let note = Note::from_bytes(checkpoint.note.as_bytes()).expect("a signed note");
    let body = tlog_tiles::Checkpoint::from_bytes(note.text()).expect("a tlog checkpoint");
    let origin = body.origin().to_owned();
    note.verify(&verifiers(app, &origin).await)
        .expect("signed by the server's key under the origin");
    (origin, body.size(), *body.hash())
}

fn hashes(proof: &[Vec<u8>]) -> Vec<Hash> {
    proof
        .iter()
        .map(|hash| Hash(hash.as_slice().try_into().unwrap()))
        .collect()
}

async fn every_event_is_proven_in_the_signed_tree_and_every_tree_extends_the_last(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), true).await;
    let (origin, old_size, old_root) = signed_tree(&app).await;
    assert!(origin.starts_with("policyhub.log/"), "{origin}");
    let events = app.events("team", "limits").await;
    assert!(old_size as usize >= events.len());

    for event in &events {
        let proof = app
            .policy
            .clone()
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                event_id: event.id,
                tree_size: old_size,
            })
            .await
            .unwrap()
            .into_inner();
        let canonical = proof.canonical_event.as_bytes();
        assert_eq!(
            event.hash,
            format!("sha256:{:x}", Sha256::digest(canonical)),
            "the leaf's bytes are the ones the chain hashes"
        );
        tlog_tiles::check_record(
            &hashes(&proof.hashes),
            old_size,
            old_root,
            proof.leaf_index,
            tlog_tiles::record_hash(canonical),
        )
        .expect("the event is in the signed tree");
    }

    app.release("team", "limits", json!({"max": 3}), true).await;
    let (same_origin, new_size, new_root) = signed_tree(&app).await;
    assert_eq!(same_origin, origin);
    assert!(new_size > old_size);
    let proof = app
        .bundle
        .clone()
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.new_size, new_size, "the newest checkpoint's tree");
    let proof = hashes(&proof.hashes);
    tlog_tiles::check_tree(&proof, new_size, new_root, old_size, old_root)
        .expect("the new tree extends the old one");
    assert!(
        tlog_tiles::check_tree(&proof, new_size, new_root, old_size, new_root).is_err(),
        "and no other"
    );

    // The CLI prints the same proof.
    let printed = policyhub(
        &app,
        &[
            "get-consistency-proof",
            "--old-size",
            &old_size.to_string(),
            "--new-size",
            &new_size.to_string(),
            "-o",
            "json",
        ],
    )
    .json();
    let printed: Vec<Hash> = printed["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(hash.as_str().unwrap())
                .unwrap();
            Hash(bytes.try_into().unwrap())
        })
        .collect();
    assert_eq!(printed, proof);

    let refused = app
        .bundle
        .clone()
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: new_size + 1,
            new_size,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

/// The checkpoint a watch message carries.
fn carried(message: WatchActiveResponse) -> proto::Checkpoint {
    proto::Checkpoint::decode(message.checkpoint.expect("carried")).unwrap()
}

/// The size and root of a checkpoint's note, its signature verified.
async fn carried_tree(app: &TestApp, checkpoint: &proto::Checkpoint) -> (u64, Hash) {
    let (_, size, root) = verified_tree(app, checkpoint).await;
    (size, root)
}

/// Each update a stream receives carries, with its checkpoint, the proof
/// that its tree extends the tree of the checkpoint the update before
/// carried: it checks with an independent verifier against both signed
/// notes, and against no other tree.
async fn each_watch_message_proves_its_tree_extends_the_one_carried_before(app: TestApp) {
    app.release("team", "limits", json!({"max": 0}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    let snapshot = carried(next_message(&mut stream).await);
    let mut before = carried_tree(&app, &snapshot).await;
    for max in 1..=3 {
        app.release("team", "limits", json!({"max": max}), true)
            .await;
        // Heartbeats aside, the update with the new version.
        let update = loop {
            let message = next_message(&mut stream).await;
            if !bundles_of(&message).is_empty() {
                break message;
            }
        };
        let checkpoint = carried(update);
        let (size, root) = carried_tree(&app, &checkpoint).await;
        let proof = checkpoint
            .consistency_proof
            .expect("the proof from the tree carried before");
        assert_eq!((proof.old_size, proof.new_size), (before.0, size));
        let hashes = hashes(&proof.hashes);
        tlog_tiles::check_tree(&hashes, size, root, before.0, before.1)
            .expect("the carried tree extends the one before");
        assert!(
            tlog_tiles::check_tree(&hashes, size, before.1, before.0, before.1).is_err(),
            "and proves no other"
        );
        before = (size, root);
    }
}

/// A checkpoint signed as the interval passes, of the same tree as the one
/// carried before it, carries the same proof: a stream that missed the one
/// before still receives the proof from the tree before that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_the_same_tree_keeps_the_proof_carried() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.audit.checkpoint_interval = std::time::Duration::from_millis(400);
        settings.watch.heartbeat_interval = std::time::Duration::from_millis(100);
    })
    .await;
    app.release("team", "limits", json!({"max": 0}), true).await;
    let mut stream = app.watch("team", &[], 0).await;
    next_message(&mut stream).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let first = loop {
        let message = next_message(&mut stream).await;
        if !bundles_of(&message).is_empty() {
            break carried(message);
        }
    };
    assert!(first.consistency_proof.is_some(), "{first:?}");
    let refreshed = loop {
        let checkpoint = carried(next_message(&mut stream).await);
        if checkpoint.jws != first.jws {
            break checkpoint;
        }
    };
    assert_eq!(
        carried_tree(&app, &refreshed).await,
        carried_tree(&app, &first).await,
        "a checkpoint of the same tree"
    );
    assert_eq!(refreshed.consistency_proof, first.consistency_proof);
}

/// Over HTTP, at the path of the RPC's option, the proof is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inclusion_proof_is_served_over_http() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let (_, size, root) = signed_tree(&app).await;
    let event = app.events("team", "limits").await[0].clone();
    let reply = curl(
        &app,
        "GET",
        &format!("/v1/log/inclusion/{}?treeSize={size}", event.id),
        None,
        &[],
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let proof: Vec<Vec<u8>> = reply.json["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| {
            base64::engine::general_purpose::STANDARD
                .decode(hash.as_str().unwrap())
                .unwrap()
        })
        .collect();
    let canonical = reply.json["canonicalEvent"].as_str().unwrap();
    let leaf_index = reply.json["leafIndex"].as_str().unwrap().parse().unwrap();
    tlog_tiles::check_record(
        &hashes(&proof),
        size,
        root,
        leaf_index,
        tlog_tiles::record_hash(canonical.as_bytes()),
    )
    .unwrap();
}

/// Two deployments have two logs: their origins differ, and a configured
/// origin names the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_deployment_names_its_own_log() {
    let first = crate::helpers::spawn_app(Backend::Sqlite).await;
    let second = crate::helpers::spawn_app(Backend::Sqlite).await;
    let configured = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.audit.log_origin = Some("policy.example.com/log".into());
    })
    .await;
    for app in [&first, &second, &configured] {
        app.release("team", "limits", json!({"max": 1}), true).await;
    }
    let origin = signed_tree(&first).await.0;
    assert_ne!(origin, signed_tree(&second).await.0);
    assert_eq!(signed_tree(&configured).await.0, "policy.example.com/log");

    let database = first.stop().await;
    let first = spawn_on(database, |_| {}).await;
    first
        .release("team", "limits", json!({"max": 2}), true)
        .await;
    assert_eq!(
        signed_tree(&first).await.0,
        origin,
        "stable across restarts"
    );
}

/// A database whose tree is gone, as one from before the tree: the server
/// appends every event at start, to the tree the checkpoints signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_before_the_tree_are_appended_at_start() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    for version in 1..=3 {
        app.release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let (_, size, root) = signed_tree(&app).await;
    let db = app.sql().await;
    use sea_orm::ConnectionTrait;
    for statement in [
        "DROP TRIGGER log_hashes_refuse_delete",
        "DELETE FROM log_hashes",
        "CREATE TRIGGER log_hashes_refuse_delete BEFORE DELETE ON log_hashes \
         BEGIN SELECT RAISE(ABORT, 'policyhub: log_hashes rows are never changed'); END",
    ] {
        db.execute_unprepared(statement).await.unwrap();
    }
    db.close().await.ok();
    let app = spawn_on(app.stop().await, |_| {}).await;
    app.release("team", "limits", json!({"max": 4}), true).await;
    let proof = app
        .bundle
        .clone()
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: size,
            new_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (_, new_size, new_root) = signed_tree(&app).await;
    tlog_tiles::check_tree(&hashes(&proof.hashes), new_size, new_root, size, root)
        .expect("the rebuilt tree extends the signed one");
}

/// The independent verifier (Python: hashlib, cryptography), written from
/// RFC 9162 and the C2SP specifications, over what the CLI prints.
pub(crate) struct Verifier {
    dir: tempfile::TempDir,
    origin: String,
}

impl Verifier {
    pub(crate) fn new(app: &TestApp, origin: &str) -> Self {
        let keys = policyhub(app, &["get-signing-keys", "-o", "json"]);
        Verifier::trusting(keys.success(), origin)
    }

    /// A verifier of the log `origin` signed by the keys of `jwks`.
    pub(crate) fn trusting(jwks: &str, origin: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
        Verifier {
            dir,
            origin: origin.to_owned(),
        }
    }

    /// Writes `json` as `name` for the verifier.
    pub(crate) fn keep(&self, name: &str, json: &serde_json::Value) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, json.to_string()).unwrap();
        path.display().to_string()
    }

    fn run(&self, origin: &str, args: &[&str]) -> std::process::Output {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/audit/verify_tree.py");
        std::process::Command::new("python3")
            .arg(script)
            .arg("--jwks")
            .arg(self.dir.path().join("jwks.json"))
            .args(["--origin", origin])
            .args(args)
            .output()
            .expect("run python3")
    }

    #[track_caller]
    pub(crate) fn accepts(&self, args: &[&str]) -> String {
        let run = self.run(&self.origin, args);
        assert!(run.status.success(), "{run:?}");
        String::from_utf8(run.stdout).unwrap()
    }

    #[track_caller]
    pub(crate) fn refuses(&self, origin: &str, args: &[&str], saying: &str) {
        let run = self.run(origin, args);
        assert_eq!(run.status.code(), Some(1), "{run:?}");
        let said = String::from_utf8_lossy(&run.stderr);
        assert!(said.contains(saying), "{saying}: {said}");
    }
}

fn newest_checkpoint_json(app: &TestApp) -> serde_json::Value {
    policyhub(app, &["list-checkpoints", "-o", "json", "--limit", "1"]).json()["checkpoints"][0]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_verifier_checks_the_notes_and_the_proofs() {
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    for version in 1..=3 {
        app.release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let (origin, old_size, _) = signed_tree(&app).await;
    let verifier = Verifier::new(&app, &origin);
    let old = verifier.keep("old.json", &newest_checkpoint_json(&app));
    assert!(
        verifier
            .accepts(&["note", &old])
            .contains(&format!("signs a tree of {old_size}"))
    );
    verifier.refuses(
        "policy.example.com/log",
        &["note", &old],
        "no known key of policy.example.com/log signed the note",
    );

    for version in 4..=9 {
        app.release("team", "limits", json!({"max": version}), true)
            .await;
    }
    let events = app.events("team", "limits").await;
    for event in [events.first().unwrap(), events.last().unwrap()] {
        let proof = policyhub(
            &app,
            &[
                "get-inclusion-proof",
                "--event",
                &event.id.to_string(),
                "-o",
                "json",
            ],
        )
        .json();
        let file = verifier.keep("inclusion.json", &proof);
        verifier.accepts(&["inclusion", &file]);

        let mut forged = proof.clone();
        forged["canonicalEvent"] = json!(
            proof["canonicalEvent"]
                .as_str()
                .unwrap()
                .replace("limits", "limitz")
        );
        forged["event"]["hash"] = json!(format!(
            "sha256:{:x}",
            Sha256::digest(forged["canonicalEvent"].as_str().unwrap().as_bytes())
        ));
        let file = verifier.keep("forged.json", &forged);
        verifier.refuses(&origin, &["inclusion", &file], "is not leaf");
    }

    let proof = policyhub(
        &app,
        &[
            "get-consistency-proof",
            "--old-size",
            &old_size.to_string(),
            "-o",
            "json",
        ],
    )
    .json();
    let file = verifier.keep("consistency.json", &proof);
    verifier.accepts(&["consistency", &old, &file]);
    let mut forged = proof.clone();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut first = engine
        .decode(forged["hashes"][0].as_str().unwrap())
        .unwrap();
    first[0] ^= 1;
    forged["hashes"][0] = json!(engine.encode(first));
    let file = verifier.keep("forged.json", &forged);
    verifier.refuses(&origin, &["consistency", &old, &file], "does not extend");

    // A note whose text changed no longer carries a valid signature.
    let mut tampered = newest_checkpoint_json(&app);
    let note = tampered["note"].as_str().unwrap().to_owned();
    let size_line = note.lines().nth(1).unwrap();
    tampered["note"] = json!(note.replacen(
        &format!("\n{size_line}\n"),
        &format!("\n{}\n", size_line.parse::<u64>().unwrap() + 1),
        1
    ));
    let file = verifier.keep("tampered.json", &tampered);
    verifier.refuses(&origin, &["note", &file], "does not verify");
}

/// `policyhub verify-log -f` over what an auditor keeps: the events, the
/// checkpoints (one of whose notes `edit` may change) and the keys.
fn verify_kept_log(app: &TestApp, edit: impl Fn(&mut serde_json::Value)) -> crate::cli::Run {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let events = policyhub(app, &["list-events", "-o", "json", "--limit", "100000"]);
    std::fs::write(path("events.json"), events.success()).unwrap();
    let mut checkpoints = policyhub(
        app,
        &["list-checkpoints", "-o", "json", "--limit", "100000"],
    )
    .json();
    edit(&mut checkpoints);
    std::fs::write(path("checkpoints.json"), checkpoints.to_string()).unwrap();
    let keys = policyhub(app, &["get-signing-keys", "-o", "json"]);
    std::fs::write(path("jwks.json"), keys.success()).unwrap();
    policyhub(
        app,
        &[
            "verify-log",
            "-f",
            &path("events.json"),
            "--checkpoints",
            &path("checkpoints.json"),
            "--jwks",
            &path("jwks.json"),
        ],
    )
}

#[track_caller]
fn refused(run: &crate::cli::Run, saying: &str) {
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(saying), "{saying}: {}", run.stderr);
}

/// verify-log recomputes the tree from the events, online and offline: a
/// note whose text changed fails its signature. A stored hash of the tree
/// rewritten behind the server's back, which the hash chain does not cover:
/// the server signs no further note over it, and the live verify-log finds
/// the proofs it serves from it do not tie the notes together.
async fn verify_log_recomputes_the_tree_and_refuses_notes_the_events_do_not_make(app: TestApp) {
    for version in 1..=3 {
        app.release("team", "limits", json!({"max": version}), true)
            .await;
    }
    policyhub(&app, &["verify-log"]).success();
    verify_kept_log(&app, |_| {}).success();
    let changed_size = |checkpoints: &mut serde_json::Value| {
        let note = checkpoints["checkpoints"][0]["note"]
            .as_str()
            .unwrap()
            .to_owned();
        let size = note.lines().nth(1).unwrap().to_owned();
        let grown = (size.parse::<u64>().unwrap() - 1).to_string();
        checkpoints["checkpoints"][0]["note"] =
            json!(note.replacen(&format!("\n{size}\n"), &format!("\n{grown}\n"), 1));
    };
    refused(
        &verify_kept_log(&app, changed_size),
        "the checkpoint note does not verify",
    );

    // The tree's stored hashes rewritten, the guard off for the while:
    // every proof between two notes reads some of them, whichever sizes
    // the notes have (a checkpoint at start-up may or may not come first).
    let db = app.sql().await;
    use sea_orm::ConnectionTrait;
    let (off, rewrite, on) = match app.database.backend {
        Backend::Sqlite => (
            "DROP TRIGGER log_hashes_refuse_update",
            "UPDATE log_hashes SET hash = zeroblob(32)",
            "CREATE TRIGGER log_hashes_refuse_update BEFORE UPDATE ON log_hashes \
             BEGIN SELECT RAISE(ABORT, 'policyhub: log_hashes rows are never changed'); END",
        ),
        Backend::Postgres => (
            "ALTER TABLE log_hashes DISABLE TRIGGER USER",
            "UPDATE log_hashes SET hash = decode(repeat('00', 32), 'hex')",
            "ALTER TABLE log_hashes ENABLE TRIGGER USER",
        ),
    };
    for statement in [off, rewrite, on] {
        db.execute_unprepared(statement).await.unwrap();
    }
    db.close().await.ok();
    refused(
        &policyhub(&app, &["verify-log"]),
        "the tree it serves proofs from is not the one its notes signed",
    );
    verify_kept_log(&app, |_| {}).success();
}
