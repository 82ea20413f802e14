//! Signed bundles verify offline; tampering and key rotation.

use std::process::Command;

use policyhub::grpc::proto;
use serde_json::json;

use crate::helpers::{
    Backend, TestApp, TestDatabase, policyhub_binary, send_signal, spawn_app, spawn_binary_server,
    spawn_on, terminate,
};

fn verify_with_cli(jwks: &str, bundle: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    let bundle_path = dir.path().join("bundle.json");
    std::fs::write(&jwks_path, jwks).unwrap();
    std::fs::write(&bundle_path, bundle).unwrap();
    Command::new(policyhub_binary())
        .arg("verify")
        .arg("--jwks")
        .arg(&jwks_path)
        .arg(&bundle_path)
        .output()
        .expect("run policyhub verify")
}

async fn active_bundle(app: &TestApp) -> proto::Bundle {
    app.get_active("payments", "limits")
        .await
        .expect("active bundle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_from_get_active_verifies_and_one_flipped_byte_fails() {
    let app = spawn_app(Backend::Sqlite).await;
    app.draft(
        "payments",
        "limits",
        json!({"max": 100, "currencies": ["EUR", "USD"]}),
    )
    .await;
    app.publish("payments", "limits", "1.0.0", true).await;
    let bundle = active_bundle(&app).await;
    let jwks = app.jwks_json().await;

    let ok = verify_with_cli(&jwks, &bundle.jws);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let printed = String::from_utf8_lossy(&ok.stdout);
    assert!(
        printed.contains("payments/limits version 1 (1.0.0)"),
        "{printed}"
    );
    assert!(printed.contains(&bundle.digest), "{printed}");

    // Flip one byte in the header, the payload and the signature in turn.
    let dots: Vec<usize> = bundle.jws.match_indices('.').map(|(i, _)| i).collect();
    for position in [5, dots[0] + 10, dots[1] + 10, bundle.jws.len() - 3] {
        let mut bytes = bundle.jws.clone().into_bytes();
        bytes[position] = if bytes[position] == b'x' { b'y' } else { b'x' };
        let tampered = String::from_utf8(bytes).unwrap();
        let failed = verify_with_cli(&jwks, &tampered);
        assert_eq!(
            failed.status.code(),
            Some(1),
            "byte {position} flipped but the bundle verified"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_before_a_key_rotation_still_verifies_after_it() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let keys = tempfile::tempdir().unwrap();
        let (old_key, new_key) = (keys.path().join("old.pem"), keys.path().join("new.pem"));
        let old_kid = policyhub::signing::write_new_key(&old_key)
            .unwrap()
            .key_id()
            .to_owned();
        let new_kid = policyhub::signing::write_new_key(&new_key)
            .unwrap()
            .key_id()
            .to_owned();

        let database = TestDatabase::new(backend).await;
        let app = spawn_on(database, |settings| {
            settings.signing.key_files = vec![old_key.clone()]
        })
        .await;
        app.release("payments", "limits", json!({"max": 1}), true)
            .await;
        let old_bundle = active_bundle(&app).await;
        assert_eq!(old_bundle.key_id, old_kid);
        let database = app.stop().await;

        // Only the new key is configured now; the old public key stays in
        // the database and in the JWKS.
        let app = spawn_on(database, |settings| {
            settings.signing.key_files = vec![new_key.clone()]
        })
        .await;
        app.release("payments", "limits", json!({"max": 2}), true)
            .await;
        let new_bundle = active_bundle(&app).await;
        assert_eq!(
            new_bundle.key_id, new_kid,
            "new publishes carry the new kid"
        );
        let jwks = app.jwks_json().await;
        let kids: Vec<String> = serde_json::from_str::<serde_json::Value>(&jwks).unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            kids.contains(&old_kid) && kids.contains(&new_kid),
            "{kids:?}"
        );
        for bundle in [&old_bundle, &new_bundle] {
            let output = verify_with_cli(&jwks, &bundle.jws);
            assert!(
                output.status.success(),
                "{backend:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let rotations: Vec<String> = app
            .policy
            .clone()
            .list_events(proto::ListEventsRequest {
                namespace: String::new(),
                name: String::new(),
                kinds: vec![proto::EventKind::KeyRotated as i32],
                page_size: 10,
                page_token: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .into_iter()
            .map(|event| event.key_id)
            .collect();
        assert_eq!(rotations, [new_kid.clone(), old_kid.clone()], "{backend:?}");
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_key_is_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app(Backend::Sqlite).await;
    let path = app
        .database
        .data_dir
        .path()
        .join(policyhub::signing::GENERATED_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_without_a_restart_keeps_old_bundles_verifiable() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        app.release("payments", "limits", json!({"max": 1}), true)
            .await;
        let old_bundle = active_bundle(&app).await;
        let rotated = app
            .policy
            .clone()
            .rotate_signing_key(proto::RotateSigningKeyRequest {
                reason: "yearly rotation".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rotated.previous_key_id, old_bundle.key_id);
        assert_ne!(rotated.signing_key_id, old_bundle.key_id);
        app.release("payments", "limits", json!({"max": 2}), true)
            .await;
        let new_bundle = active_bundle(&app).await;
        assert_eq!(
            new_bundle.key_id, rotated.signing_key_id,
            "new publishes carry the new kid"
        );
        let jwks = app.jwks_json().await;
        for bundle in [&old_bundle, &new_bundle] {
            let output = verify_with_cli(&jwks, &bundle.jws);
            assert!(
                output.status.success(),
                "{backend:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let rotation = app
            .policy
            .clone()
            .list_events(proto::ListEventsRequest {
                kinds: vec![proto::EventKind::KeyRotated as i32],
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events
            .remove(0);
        assert_eq!(
            (
                rotation.key_id.as_str(),
                rotation.reason.as_str(),
                rotation.actor.as_str()
            ),
            (
                rotated.signing_key_id.as_str(),
                "yearly rotation",
                "anonymous"
            )
        );
        // The key the server restarts with is the rotated one.
        let database = app.stop().await;
        let app = spawn_on(database, |_| {}).await;
        app.release("payments", "limits", json!({"max": 3}), true)
            .await;
        assert_eq!(active_bundle(&app).await.key_id, rotated.signing_key_id);
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_files_rotate_by_reload_not_by_rpc() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("signing.pem");
    policyhub::signing::write_new_key(&key).unwrap();
    let database = TestDatabase::new(Backend::Sqlite).await;
    let app = spawn_on(database, |settings| {
        settings.signing.key_files = vec![key.clone()]
    })
    .await;
    let refused = app
        .policy
        .clone()
        .rotate_signing_key(proto::RotateSigningKeyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("send SIGHUP"),
        "{}",
        refused.message()
    );
}

/// The real binary: SIGHUP reloads replaced key files, SIGTERM stops it
/// cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_key_files_and_sigterm_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    let first_kid = policyhub::signing::write_new_key(&key)
        .unwrap()
        .key_id()
        .to_owned();
    let (server, channel) = spawn_binary_server(
        &dir.path().join("data"),
        &[(
            "POLICYHUB_SIGNING__KEY_FILES",
            format!("[\"{}\"]", key.display()),
        )],
    )
    .await;
    let mut bundles = proto::bundle_service_client::BundleServiceClient::new(channel);
    let signing_kid = |response: proto::GetSigningKeysResponse| response.signing_key_id;
    assert_eq!(
        signing_kid(
            bundles
                .get_signing_keys(proto::GetSigningKeysRequest {})
                .await
                .unwrap()
                .into_inner()
        ),
        first_kid
    );

    std::fs::remove_file(&key).unwrap();
    let second_kid = policyhub::signing::write_new_key(&key)
        .unwrap()
        .key_id()
        .to_owned();
    send_signal(&server, "-HUP");
    let mut reloaded = false;
    for _ in 0..50 {
        let keys = bundles
            .get_signing_keys(proto::GetSigningKeysRequest {})
            .await
            .unwrap()
            .into_inner();
        if keys.signing_key_id == second_kid {
            let kids: Vec<_> = keys.keys.iter().map(|key| key.kid.clone()).collect();
            assert!(
                kids.contains(&first_kid) && kids.contains(&second_kid),
                "{kids:?}"
            );
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reloaded, "SIGHUP installed the new key");

    terminate(server).await;
}
