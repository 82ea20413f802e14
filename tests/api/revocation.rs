//! Revoking a signing key: the key that signs, or one that never signed,
//! is refused and nothing changes; a key rotated away leaves the JWKS, the
//! versions it signed are signed again by the signing key (their digests
//! unchanged), watchers are sent the active ones again under a new
//! revision, the log's tree still proves every event and extends the tree
//! before, and an independent verifier accepts the new signatures.

use std::time::Duration;

use policyhub::grpc::proto::{self, WatchEventKind};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDatabase, next_message, spawn_on};
use crate::log_tree::signed_tree;
use crate::rollouts::{start_request, step};

crate::on_both_backends!(
    revoking_the_signing_key_or_an_unknown_one_is_refused_and_changes_nothing,
    a_revoked_key_leaves_the_jwks_and_what_it_signed_is_signed_again,
    a_key_that_signed_a_live_rollouts_candidate_is_revoked_only_once_it_ends,
);

async fn revoke(
    app: &TestApp,
    key_id: &str,
) -> Result<proto::RevokeSigningKeyResponse, tonic::Status> {
    Ok(app
        .policy
        .clone()
        .revoke_signing_key(proto::RevokeSigningKeyRequest {
            key_id: key_id.into(),
            reason: "key leaked".into(),
        })
        .await?
        .into_inner())
}

async fn signing_keys(app: &TestApp) -> proto::GetSigningKeysResponse {
    app.bundle
        .clone()
        .get_signing_keys(proto::GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn revoking_the_signing_key_or_an_unknown_one_is_refused_and_changes_nothing(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    let keys = signing_keys(&app).await;
    let before = app.db_state().await;

    let refused = revoke(&app, &keys.signing_key_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("rotate"),
        "{}",
        refused.message()
    );
    let unknown = revoke(&app, "no-such-key").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    assert_eq!(
        app.db_state().await,
        before,
        "a refused revocation changed nothing"
    );
    assert_eq!(signing_keys(&app).await, keys);
    app.stop().await;
}

/// A live rollout's cohort holds the candidate as it was sent: revoking
/// the key that signed it is refused, naming the rollout, and changes
/// nothing; once the rollout is aborted the key is revoked.
async fn a_key_that_signed_a_live_rollouts_candidate_is_revoked_only_once_it_ends(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    app.release("team", "limits", json!({"max": 2}), false)
        .await;
    let candidate_key = signing_keys(&app).await.signing_key_id;
    app.policy
        .clone()
        .rotate_signing_key(proto::RotateSigningKeyRequest {
            reason: "rotate before revoking".into(),
        })
        .await
        .unwrap();
    let rollout = app
        .policy
        .clone()
        .start_rollout(start_request(vec![step(50, Duration::from_secs(3600))]))
        .await
        .unwrap()
        .into_inner();
    let keys = signing_keys(&app).await;
    let before = app.db_state().await;

    let refused = revoke(&app, &candidate_key).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains(&rollout.id) && refused.message().contains("abort"),
        "{}",
        refused.message()
    );
    assert_eq!(
        app.db_state().await,
        before,
        "a refused revocation changed nothing"
    );
    assert_eq!(signing_keys(&app).await, keys);

    app.policy
        .clone()
        .abort_rollout(proto::RolloutControlRequest {
            namespace: "team".into(),
            id: rollout.id.clone(),
            reason: "revoke its key".into(),
        })
        .await
        .unwrap();
    revoke(&app, &candidate_key).await.unwrap();
    assert!(
        signing_keys(&app)
            .await
            .revoked_key_ids
            .contains(&candidate_key)
    );
    app.stop().await;
}

async fn a_revoked_key_leaves_the_jwks_and_what_it_signed_is_signed_again(app: TestApp) {
    app.release("payments", "limits", json!({"max": 1}), true)
        .await;
    app.release("payments", "limits", json!({"max": 2}), false)
        .await;
    app.release("payments", "fees", json!({"rate": 3}), true)
        .await;
    let old = app.get_active("payments", "limits").await.unwrap();
    let old_key = old.key_id.clone();
    let rotated = app
        .policy
        .clone()
        .rotate_signing_key(proto::RotateSigningKeyRequest {
            reason: "rotate before revoking".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (origin, size_before, root_before) = signed_tree(&app).await;
    let mut watcher = app.watch("payments", &[], old.revision.max(3)).await;
    let caught_up = next_message(&mut watcher).await;

    let revoked = revoke(&app, &old_key).await.unwrap();
    assert_eq!(
        (
            revoked.key_id.as_str(),
            revoked.signing_key_id.as_str(),
            revoked.re_signed_versions,
            revoked.already_revoked
        ),
        (old_key.as_str(), rotated.signing_key_id.as_str(), 3, false)
    );
    assert!(revoked.revision > caught_up.revision);

    // The key left the JWKS and is listed as revoked.
    let keys = signing_keys(&app).await;
    assert!(keys.keys.iter().all(|key| key.kid != old_key));
    assert_eq!(keys.revoked_key_ids, std::slice::from_ref(&old_key));

    // The active bundle, signed again: same version and digest, new key,
    // sent again at the revocation's revision.
    let active = app.get_active("payments", "limits").await.unwrap();
    assert_eq!(
        (
            active.version,
            active.digest.as_str(),
            active.key_id.as_str(),
            active.revision
        ),
        (
            old.version,
            old.digest.as_str(),
            rotated.signing_key_id.as_str(),
            revoked.revision
        )
    );
    assert_ne!(active.jws, old.jws);
    let jwks: policyhub::signing::Jwks = serde_json::from_str(&app.jwks_json().await).unwrap();
    let claims = policyhub::signing::verify(&active.jws, &jwks).expect("verifies with the new key");
    let old_claims: policyhub::signing::BundleClaims =
        serde_json::from_slice(&base64_payload(&old.jws)).unwrap();
    assert_eq!(claims, old_claims, "the claims are the ones signed before");
    assert!(
        policyhub::signing::verify(&old.jws, &jwks).is_err(),
        "the old signature no longer verifies against the JWKS"
    );
    for version in app.versions("payments", "limits").await {
        assert_eq!(
            version.key_id, rotated.signing_key_id,
            "version {}",
            version.version
        );
    }

    // A watcher holding the old signatures is sent the active ones again.
    let update = next_message(&mut watcher).await;
    assert_eq!(
        (update.kind(), update.revision),
        (WatchEventKind::Update, revoked.revision)
    );
    let mut sent: Vec<(String, String)> = update
        .decode_bundles()
        .unwrap()
        .into_iter()
        .map(|bundle| (bundle.name, bundle.key_id))
        .collect();
    sent.sort();
    let new_key = rotated.signing_key_id.clone();
    assert_eq!(
        sent,
        [
            ("fees".to_owned(), new_key.clone()),
            ("limits".to_owned(), new_key.clone())
        ]
    );

    // Recorded, with who did it.
    let events = app
        .policy
        .clone()
        .list_events(proto::ListEventsRequest {
            kinds: vec![
                proto::EventKind::KeyRevoked as i32,
                proto::EventKind::ReSigned as i32,
            ],
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let revocation = events
        .iter()
        .find(|event| event.kind() == proto::EventKind::KeyRevoked)
        .expect("a KEY_REVOKED event");
    assert_eq!(
        (
            revocation.key_id.as_str(),
            revocation.actor.as_str(),
            revocation.reason.as_str(),
            revocation.revision
        ),
        (
            old_key.as_str(),
            "anonymous",
            "key leaked",
            revoked.revision
        )
    );
    assert_eq!(
        events
            .iter()
            .filter(|event| event.kind() == proto::EventKind::ReSigned)
            .count(),
        3
    );

    // The log's tree proves every event and extends the tree before.
    let (same_origin, size_after, root_after) = signed_tree(&app).await;
    assert_eq!(same_origin, origin);
    let consistency = app
        .bundle
        .clone()
        .get_consistency_proof(proto::GetConsistencyProofRequest {
            old_size: size_before,
            new_size: size_after,
        })
        .await
        .unwrap()
        .into_inner();
    tlog_tiles::check_tree(
        &hashes(&consistency.hashes),
        size_after,
        root_after,
        size_before,
        root_before,
    )
    .expect("the tree after the revocation extends the one before");
    for event in app.events("payments", "limits").await {
        let proof = app
            .policy
            .clone()
            .get_inclusion_proof(proto::GetInclusionProofRequest {
                event_id: event.id,
                tree_size: size_after,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            event.hash,
            format!(
                "sha256:{:x}",
                Sha256::digest(proof.canonical_event.as_bytes())
            )
        );
        tlog_tiles::check_record(
            &hashes(&proof.hashes),
            size_after,
            root_after,
            proof.leaf_index,
            tlog_tiles::record_hash(proof.canonical_event.as_bytes()),
        )
        .expect("the event is in the signed tree");
    }
    // The bundle a runtime holds now is proven by its RE_SIGNED event.
    let proof = app
        .bundle
        .clone()
        .get_bundle_proof(proto::GetBundleProofRequest {
            namespace: "payments".into(),
            name: "limits".into(),
            version: active.version,
            revision: active.revision,
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        proof
            .activated
            .unwrap()
            .canonical_event
            .contains("\"kind\":\"RE_SIGNED\"")
    );

    // An independent verifier (PyJWT) accepts the new signature.
    independent_verifier_accepts(&active.jws, &app.jwks_json().await);

    // A second revocation changes nothing and says so.
    let before = app.db_state().await;
    let again = revoke(&app, &old_key).await.unwrap();
    assert!(again.already_revoked);
    assert_eq!((again.re_signed_versions, again.revision), (0, 0));
    assert_eq!(app.db_state().await, before);

    // After a restart the key stays revoked and the bundles re-signed; a
    // watcher resuming from before the revocation is sent them.
    let database = app.stop().await;
    let app = spawn_on(database, |_| {}).await;
    assert_eq!(
        signing_keys(&app).await.revoked_key_ids,
        std::slice::from_ref(&old_key)
    );
    let mut resumed = app.watch("payments", &["limits"], caught_up.revision).await;
    let update = next_message(&mut resumed).await;
    assert_eq!(
        update
            .decode_bundles()
            .unwrap()
            .into_iter()
            .map(|bundle| (bundle.version, bundle.key_id, bundle.revision))
            .collect::<Vec<_>>(),
        [(old.version, new_key, revoked.revision)]
    );
    app.stop().await;
}

fn hashes(proof: &[Vec<u8>]) -> Vec<tlog_tiles::Hash> {
    proof
        .iter()
        .map(|hash| tlog_tiles::Hash(hash.as_slice().try_into().unwrap()))
        .collect()
}

fn base64_payload(jws: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jws.split('.').nth(1).unwrap())
        .unwrap()
}

/// PyJWT verifies `jws` with the key of `jwks` its header names.
fn independent_verifier_accepts(jws: &str, jwks: &str) {
    let script = r#"
import json, sys
import jwt
jws, jwks = sys.argv[1], json.loads(sys.argv[2])
kid = jwt.get_unverified_header(jws)["kid"]
key = next(jwt.PyJWK(k) for k in jwks["keys"] if k["kid"] == kid)
claims = jwt.decode(jws, key=key.key, algorithms=["EdDSA"], options={"verify_aud": False})
print(claims["digest"])
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, jws, jwks])
        .output()
        .expect("run python3 (PYTHONPATH holds PyJWT)");
    assert!(
        output.status.success(),
        "PyJWT refused the re-signed bundle: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two replicas on one database sign with keys of their own. When one
/// revokes the other's key, the other signs nothing more with it: a
/// publish and a restoring rollback there are refused, naming the key, and
/// change nothing, where before it went on signing until restarted. The
/// revoking replica verifies what it signs again with the keys its
/// transaction reads, the other's just registered among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_key_another_revoked_signs_nothing_more() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let replica = database.replica();
    let first = spawn_on(database, |_| {}).await;
    let second = spawn_on(replica, |_| {}).await;
    first.release("team", "limits", json!({"n": 1}), true).await;
    second
        .release("team", "limits", json!({"n": 2}), false)
        .await;
    let second_key = signing_keys(&second).await.signing_key_id;
    assert_ne!(second_key, signing_keys(&first).await.signing_key_id);
    let revoked = revoke(&first, &second_key).await.unwrap();
    assert_eq!(revoked.re_signed_versions, 1, "{revoked:?}");
    second.draft("team", "limits", json!({"n": 3})).await;
    let before = second.db_state().await;

    let publish = second
        .try_publish(proto::PublishRequest {
            namespace: "team".into(),
            name: "limits".into(),
            reason: "after the revocation".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let restore = second
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            to_version: Some(2),
            restore: true,
            reason: "after the revocation".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    for refused in [publish, restore] {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused.message().contains(&second_key) && refused.message().contains("revoked"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        second.db_state().await,
        before,
        "a refused signature changed nothing"
    );
    first.stop().await;
    second.stop().await;
}
