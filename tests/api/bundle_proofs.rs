//! A bundle proven in the log: the PUBLISHED event of its version and the
//! ACTIVATED or ROLLED_BACK event that made it active at its revision,
//! both proven in one signed tree, checked by the independent verifier
//! against the bundle a runtime holds; and what is no bundle refused with
//! a bounded error, the same on SQLite and PostgreSQL. A reader of one
//! namespace proves its own entries and learns nothing of the others'.

use policyhub::grpc::proto;
use serde_json::json;
use tonic::Code;

use crate::auth::{Issuer, secured_app, seed, with_token};
use crate::cli::{policyhub, policyhub_with};
use crate::helpers::{Backend, TestApp, TestDatabase, spawn_on};
use crate::http::curl;
use crate::log_tree::{Verifier, signed_tree};

crate::on_both_backends!(
    a_bundle_is_proven_by_its_published_and_activating_events,
    what_is_no_bundle_is_refused_alike_and_changes_nothing
);

fn request(
    name: &str,
    version: u32,
    revision: u64,
    tree_size: u64,
) -> proto::GetBundleProofRequest {
    proto::GetBundleProofRequest {
        namespace: "team".into(),
        name: name.into(),
        version,
        revision,
        tree_size,
    }
}

async fn a_bundle_is_proven_by_its_published_and_activating_events(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let first = app.get_active("team", "limits").await.unwrap().revision;
    app.release("team", "limits", json!({"max": 2}), true).await;
    let rolled_back = app
        .policy
        .clone()
        .rollback(proto::RollbackRequest {
            namespace: "team".into(),
            name: "limits".into(),
            reason: "too loose".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled_back.version, 1);
    let (origin, ..) = signed_tree(&app).await;
    let verifier = Verifier::new(&app, &origin);

    // What a runtime holds now: version 1, active again since the rollback.
    let held = policyhub(&app, &["get-active", "team/limits", "-o", "json"]).json();
    assert_eq!(held["revision"], json!(rolled_back.revision.to_string()));
    let held = verifier.keep("held.json", &held);
    let prove = |revision: u64| {
        policyhub(
            &app,
            &[
                "get-bundle-proof",
                "team/limits",
                "--version",
                "1",
                "--revision",
                &revision.to_string(),
                "-o",
                "json",
            ],
        )
        .json()
    };
    let proof = prove(rolled_back.revision);
    assert_eq!(proof["published"]["event"]["kind"], "EVENT_KIND_PUBLISHED");
    assert_eq!(
        proof["activated"]["event"]["kind"],
        "EVENT_KIND_ROLLED_BACK"
    );
    let file = verifier.keep("proof.json", &proof);
    let said = verifier.accepts(&["bundle", &held, &file]);
    assert!(
        said.contains(&format!("made active at revision {}", rolled_back.revision)),
        "{said}"
    );

    // Version 1 was a bundle at its first revision too, by its ACTIVATED
    // event; that proof is not one of the bundle held now.
    let earlier = prove(first);
    assert_eq!(
        earlier["activated"]["event"]["kind"],
        "EVENT_KIND_ACTIVATED"
    );
    assert_eq!(earlier["published"], proof["published"]);
    let file = verifier.keep("earlier.json", &earlier);
    verifier.refuses(&origin, &["bundle", &held, &file], "not at the bundle's");

    // Both proofs are in one tree, the one asked for.
    let (_, size, _) = signed_tree(&app).await;
    let sized = app
        .bundle
        .clone()
        .get_bundle_proof(request("limits", 1, first, size))
        .await
        .unwrap()
        .into_inner();
    let (published, activated) = (sized.published.unwrap(), sized.activated.unwrap());
    assert_eq!((published.tree_size, activated.tree_size), (size, size));
    assert!(published.checkpoint.is_none() && activated.checkpoint.is_none());
}

async fn what_is_no_bundle_is_refused_alike_and_changes_nothing(app: TestApp) {
    app.release("team", "limits", json!({"max": 1}), true).await;
    let revision = app.get_active("team", "limits").await.unwrap().revision;
    app.release("team", "limits", json!({"max": 2}), false)
        .await;
    app.draft("team", "limits", json!({"max": 3})).await;
    app.release("team", "other", json!({"max": 1}), true).await;
    let before = app.db_state().await;
    let huge = u64::MAX;
    let cases = [
        (
            "an unknown policy",
            request("nothing", 1, revision, 0),
            Code::NotFound,
            "team/nothing",
        ),
        (
            "version 0",
            request("limits", 0, revision, 0),
            Code::InvalidArgument,
            "version",
        ),
        (
            "an unknown version",
            request("limits", 99, revision, 0),
            Code::NotFound,
            "version 99",
        ),
        (
            "the largest version",
            request("limits", u32::MAX, revision, 0),
            Code::NotFound,
            "4294967295",
        ),
        (
            "a version never active",
            request("limits", 2, revision, 0),
            Code::NotFound,
            "version 2",
        ),
        (
            "a draft",
            request("limits", 3, revision, 0),
            Code::FailedPrecondition,
            "DRAFT",
        ),
        (
            "another policy's revision",
            request("limits", 1, revision + 1, 0),
            Code::NotFound,
            "at revision",
        ),
        (
            "revision 0",
            request("limits", 1, 0, 0),
            Code::InvalidArgument,
            "revision",
        ),
        (
            "a revision ahead",
            request("limits", 1, huge, 0),
            Code::InvalidArgument,
            "18446744073709551615",
        ),
        (
            "a tree larger than the log",
            request("limits", 1, revision, huge),
            Code::InvalidArgument,
            "leaves",
        ),
        (
            "a tree without the events",
            request("limits", 1, revision, 1),
            Code::InvalidArgument,
            "not in a tree of 1",
        ),
        (
            "a bad namespace",
            proto::GetBundleProofRequest {
                namespace: "Team".into(),
                ..request("limits", 1, revision, 0)
            },
            Code::InvalidArgument,
            "namespace",
        ),
    ];
    for (what, request, code, saying) in cases {
        let status = app
            .bundle
            .clone()
            .get_bundle_proof(request)
            .await
            .expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        let details = String::from_utf8_lossy(status.details());
        let text = format!("{} {details}", status.message());
        assert!(text.contains(saying), "{what}: {saying}: {text}");
        assert!(text.len() < 4096, "{what}: a bounded error: {text}");
    }
    assert_eq!(app.db_state().await, before);
}

/// Over HTTP, at the route of the RPC's option, with the revision and the
/// tree size in the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_proof_is_served_over_http() {
    let app = spawn_on(TestDatabase::new(Backend::Sqlite).await, |settings| {
        settings.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let revision = app.get_active("team", "limits").await.unwrap().revision;
    let (_, size, _) = signed_tree(&app).await;
    let path = "/v1/namespaces/team/policies/limits/versions/1/proof";
    let reply = curl(
        &app,
        "GET",
        &format!("{path}?revision={revision}&treeSize={size}"),
        None,
        &[],
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(
        reply.json["activated"]["event"]["revision"],
        json!(revision.to_string())
    );
    assert_eq!(reply.json["published"]["treeSize"], json!(size.to_string()));
    let refused = curl(&app, "GET", &format!("{path}?revision=0"), None, &[]);
    assert_eq!(refused.status, 400, "{:?}", refused.json);
}

/// A reader of team-a alone proves team-a's events and its bundle to the
/// independent verifier, against the signed note of a log it knows by its
/// origin; team-b's events and bundle are refused exactly as ones that do
/// not exist, and no answer it gets holds anything of team-b but hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_namespace_proves_its_own_entries_and_learns_nothing_of_others() {
    const ORIGIN: &str = "policy.example.com/log";
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |settings| {
        settings.audit.log_origin = Some(ORIGIN.into());
    })
    .await;
    let admin = issuer.token("root", &["*:admin"]);
    seed(&app, &admin).await;
    let proven = |namespace: &str| {
        let mut policy = app.policy.clone();
        let request = with_token(
            proto::ListEventsRequest {
                namespace: namespace.into(),
                ..Default::default()
            },
            &admin,
        );
        let admin = admin.clone();
        async move {
            let events = policy
                .list_events(request)
                .await
                .unwrap()
                .into_inner()
                .events;
            let mut canonical = Vec::new();
            for event in &events {
                let request = proto::GetInclusionProofRequest {
                    event_id: event.id,
                    tree_size: 0,
                };
                let proof = policy.get_inclusion_proof(with_token(request, &admin));
                canonical.push(proof.await.unwrap().into_inner().canonical_event);
            }
            (events, canonical)
        }
    };
    let (own, _) = proven("team-a").await;
    let (others, others_canonical) = proven("team-b").await;

    let reader = issuer.token("reader-a", &["team-a:reader"]);
    let server = format!("http://{}", app.address);
    let as_reader = |args: &[&str]| {
        policyhub_with(
            &[("POLICYHUB_SERVER", &server), ("POLICYHUB_TOKEN", &reader)],
            args,
        )
    };
    let jwks = as_reader(&["get-signing-keys", "-o", "json"]);
    let verifier = Verifier::trusting(jwks.success(), ORIGIN);
    // What an answer may hold of team-b: hashes only (in the audit paths and
    // the note's root), never an entry, its namespace or its canonical form.
    let reveals_nothing_of_team_b = |answer: &serde_json::Value| {
        let text = answer.to_string();
        assert!(!text.contains("team-b"), "{text}");
        for canonical in &others_canonical {
            assert!(!text.contains(canonical.as_str()), "{text}");
        }
    };

    for event in &own {
        let id = event.id.to_string();
        let proof = as_reader(&["get-inclusion-proof", "--event", &id, "-o", "json"]).json();
        reveals_nothing_of_team_b(&proof);
        let file = verifier.keep("inclusion.json", &proof);
        verifier.accepts(&["inclusion", &file]);
    }
    let held = as_reader(&["get-active", "team-a/x", "-o", "json"]).json();
    let revision = held["revision"].as_str().unwrap().to_owned();
    let proof = as_reader(&[
        "get-bundle-proof",
        "team-a/x",
        "--version",
        "1",
        "--revision",
        &revision,
        "-o",
        "json",
    ])
    .json();
    reveals_nothing_of_team_b(&proof);
    let (held, file) = (
        verifier.keep("held.json", &held),
        verifier.keep("proof.json", &proof),
    );
    verifier.accepts(&["bundle", &held, &file]);

    // team-b's events, and one past the end of the log, alike, whatever
    // tree they are asked in (a tree too small would tell a leaf's index).
    let unknown = others.iter().map(|event| event.id).max().unwrap() + 1000;
    let refusal = |id: u64, tree_size: &str| {
        let id_text = id.to_string();
        let run = as_reader(&[
            "get-inclusion-proof",
            "--event",
            &id_text,
            "--tree-size",
            tree_size,
        ]);
        assert_ne!(run.code, 0);
        (run.code, run.stdout, run.stderr.replace(&id_text, "N"))
    };
    for tree_size in ["0", "1"] {
        let refused = refusal(unknown, tree_size);
        assert!(
            refused
                .2
                .contains("not one of a namespace the caller may read"),
            "{refused:?}"
        );
        for event in &others {
            assert_eq!(refusal(event.id, tree_size), refused, "event {}", event.id);
        }
    }
    // team-b's bundle, and one of a namespace that does not exist, alike.
    let bundle_refusal = |policy: &str, namespace: &str| {
        let run = as_reader(&[
            "get-bundle-proof",
            policy,
            "--version",
            "1",
            "--revision",
            "1",
        ]);
        assert_ne!(run.code, 0);
        (run.code, run.stdout, run.stderr.replace(namespace, "NS"))
    };
    assert_eq!(
        bundle_refusal("team-b/y", "team-b"),
        bundle_refusal("team-c/y", "team-c")
    );
}
