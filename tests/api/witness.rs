//! `policyhub witness` (C2SP tlog-witness): it cosigns a growing log, each
//! tree only with a consistency proof from the one it cosigned last; it
//! refuses a forked history, a smaller tree, a log it does not know, and
//! says its size when the client's is another; what it cosigned survives
//! its restart.

use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use policyhub_runtime::cosignature::cosigned_by;
use serde_json::json;
use tonic::transport::Channel;

use crate::helpers::{Reaped, free_port, policyhub_binary, spawn_binary_server_on};
use crate::runtime_library::{
    copy_database, follow_events, history_refused, kill_9, quick, release, server_env,
};

/// The log's verifier key: its origin, the server's signing key.
pub(crate) async fn log_key(channel: &Channel) -> String {
    let origin = newest(channel, 0).await.origin;
    let keys = BundleServiceClient::new(channel.clone())
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&keys.keys[0].x)
        .unwrap();
    policyhub::signing::verifier_key(&origin, &public.try_into().unwrap()).unwrap()
}

/// The newest checkpoint note and the proof that it extends the tree of
/// `old_size`.
struct Proven {
    origin: String,
    size: u64,
    note: String,
    proof: Vec<Vec<u8>>,
}

async fn newest(channel: &Channel, old_size: u64) -> Proven {
    let note = crate::witnessing::listed_note(channel).await;
    let size = note.lines().nth(1).unwrap().parse().unwrap();
    let proof = if old_size == 0 {
        Vec::new()
    } else {
        BundleServiceClient::new(channel.clone())
            .get_consistency_proof(proto::GetConsistencyProofRequest {
                old_size,
                new_size: size,
            })
            .await
            .unwrap()
            .into_inner()
            .hashes
    };
    Proven {
        origin: note.lines().next().unwrap().to_owned(),
        size,
        note,
        proof,
    }
}

/// An add-checkpoint body.
fn body(old: u64, proof: &[Vec<u8>], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&base64::engine::general_purpose::STANDARD.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// A witness's answer: status, content type, body.
async fn submit(port: u16, body: String) -> (u16, String, String) {
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    let content_type = reply
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, reply.text().await.unwrap())
}

/// Starts a witness of `log` on `port` over the files in `dir`; its
/// verifier key, as it prints it.
fn spawn_witness(dir: &Path, port: u16, log: &str) -> (Reaped, String) {
    spawn_named_witness("witness.example/w1", dir, port, log)
}

/// [`spawn_witness`] under the key name `name`.
pub(crate) fn spawn_named_witness(
    name: &str,
    dir: &Path,
    port: u16,
    log: &str,
) -> (Reaped, String) {
    let mut witness = Command::new(policyhub_binary())
        .args(["witness", "--name", name, "--key-file"])
        .arg(dir.join("witness.key"))
        .arg("--state-file")
        .arg(dir.join("witness.state"))
        .args(["--log", log, "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(witness.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Reaped(witness), line.trim().to_owned())
}

/// Asserts a cosignature of `note` by the witness of `vkey`.
fn assert_cosigned(note: &str, answer: &(u16, String, String), vkey: &str) {
    assert_eq!(answer.0, 200, "{}", answer.2);
    assert!(
        answer.2.starts_with("— witness.example/w1 "),
        "{}",
        answer.2
    );
    let cosigned = format!("{note}{}", answer.2);
    assert_eq!(
        cosigned_by(&cosigned, &[vkey.to_owned()]).unwrap(),
        ["witness.example/w1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_a_growing_log_and_refuses_a_fork_or_a_smaller_tree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    std::fs::create_dir_all(&data).unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    kill_9(server);
    copy_database(&data, &backup);
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    let log = log_key(&channel).await;

    let witness_port = free_port();
    let (witness, vkey) = spawn_witness(dir.path(), witness_port, &log);
    assert!(vkey.starts_with("witness.example/w1+"), "{vkey}");
    let mode = std::fs::metadata(dir.path().join("witness.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The first tree, from the empty one.
    let first = newest(&channel, 0).await;
    let answer = submit(witness_port, body(0, &[], &first.note)).await;
    assert_cosigned(&first.note, &answer, &vkey);

    // The independent verifier checks the cosignature, and requires it.
    let jwks = BundleServiceClient::new(channel.clone())
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwks = json!({"keys": jwks.keys.iter().map(|key| json!({"x": key.x})).collect::<Vec<_>>()});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let cosigned = format!("{}{}", first.note, answer.2);
    let verify = |note: &str| {
        std::fs::write(
            dir.path().join("note.json"),
            json!({"note": note}).to_string(),
        )
        .unwrap();
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/audit/verify_tree.py"
            ))
            .arg("--jwks")
            .arg(dir.path().join("jwks.json"))
            .args([
                "--origin",
                &first.origin,
                "--witness",
                &vkey,
                "--cosignatures",
                "1",
                "note",
            ])
            .arg(dir.path().join("note.json"))
            .output()
            .unwrap()
    };
    let run = verify(&cosigned);
    assert!(run.status.success(), "{run:?}");
    let run = verify(&first.note);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("0 of the 1"),
        "{run:?}"
    );
    let forged = cosigned.replacen("witness.example/w1 ", "witness.example/w1 AAAA", 1);
    let run = verify(&forged);
    assert_eq!(run.status.code(), Some(1), "{run:?}");

    // A larger tree: the client's old size is not the witness's, which
    // says its own; proven from it, cosigned.
    release(&channel, "limits", json!({"v": 2})).await;
    release(&channel, "limits", json!({"v": 3})).await;
    let grown = newest(&channel, first.size).await;
    assert!(grown.size > first.size);
    let conflict = submit(witness_port, body(0, &[], &grown.note)).await;
    assert_eq!(
        conflict,
        (409, "text/x.tlog.size".into(), format!("{}\n", first.size))
    );
    let answer = submit(witness_port, body(first.size, &grown.proof, &grown.note)).await;
    assert_cosigned(&grown.note, &answer, &vkey);

    // The same tree again is cosigned again; a larger one whose proof does
    // not hold is not.
    let again = submit(witness_port, body(grown.size, &[], &grown.note)).await;
    assert_cosigned(&grown.note, &again, &vkey);
    release(&channel, "limits", json!({"v": 4})).await;
    let more = newest(&channel, grown.size).await;
    let mut forged = more.proof.clone();
    forged[0][0] ^= 1;
    let refused = submit(witness_port, body(grown.size, &forged, &more.note)).await;
    assert_eq!(refused.0, 422, "{}", refused.2);

    // A smaller tree: with the witness's size, more than the tree's (400);
    // with its own, not the witness's (409).
    let smaller = submit(witness_port, body(grown.size, &[], &first.note)).await;
    assert_eq!(smaller.0, 400, "{}", smaller.2);
    let smaller = submit(witness_port, body(first.size, &[], &first.note)).await;
    assert_eq!(smaller.0, 409);

    // A log it does not know, and a note its key did not sign.
    let other = first.note.replacen(&first.origin, "other.example/log", 1);
    assert_eq!(submit(witness_port, body(0, &[], &other)).await.0, 404);
    let altered = grown
        .note
        .replacen(&format!("\n{}\n", grown.size), "\n999\n", 1);
    assert_eq!(
        submit(witness_port, body(grown.size, &[], &altered))
            .await
            .0,
        403
    );

    // Restarted, it keeps its key and what it cosigned.
    kill_9(witness);
    let (witness, again) = spawn_witness(dir.path(), witness_port, &log);
    assert_eq!(again, vkey);
    let conflict = submit(witness_port, body(0, &[], &grown.note)).await;
    assert_eq!(conflict.2, format!("{}\n", grown.size));
    kill_9(server);

    // The other deployment: the backup, the same key, diverging into a
    // larger tree no proof ties to the one cosigned.
    copy_database(&backup, &data);
    let (server, channel) = spawn_binary_server_on(port, &data, &server_env()).await;
    for version in 10..15 {
        release(&channel, "limits", json!({"v": version})).await;
    }
    let fork = newest(&channel, grown.size).await;
    assert_eq!(fork.origin, grown.origin);
    assert!(fork.size > grown.size);
    let refused = submit(witness_port, body(grown.size, &fork.proof, &fork.note)).await;
    assert_eq!(refused.0, 422, "{}", refused.2);
    let refused = submit(witness_port, body(0, &[], &fork.note)).await;
    assert_eq!(refused.0, 409);
    kill_9(server);
    kill_9(witness);
}

/// A runtime that requires a witness's cosignature refuses the server's
/// checkpoints, which carry none yet: nothing is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_requiring_a_cosignature_refuses_a_checkpoint_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (server, channel) = spawn_binary_server_on(port, dir.path(), &server_env()).await;
    release(&channel, "limits", json!({"v": 1})).await;
    let witness = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let vkey = policyhub_runtime::cosignature::verifier_key(
        "witness.example/w1",
        &witness.verifying_key(),
    );
    let (task, mut states, mut events) =
        follow_events(quick(&format!("http://127.0.0.1:{port}")).witnesses(vec![vkey], 1));
    history_refused(&mut events, "carries 0 of the 1 witnesses' cosignatures").await;
    assert!(states.try_recv().is_err(), "nothing applied");
    task.abort();
    kill_9(server);
}
