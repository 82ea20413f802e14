//! Rego policies in a namespace served to OPA (docs/src/guides/opa.md):
//! drafted from a directory as `opa build` reads one, checked by the
//! embedded Rego engine before anything is stored, a refusal naming the
//! file, line and column, the same on both backends; a namespace not
//! served to OPA keeps its JSON policies as they were; overlapping bundle
//! roots keep the server from starting.

use policyhub::config::OpaNamespace;
use serde_json::json;
use tonic::Code;

use crate::cli::policyhub;
use crate::helpers::{
    Backend, TestApp, TestDatabase, expect_code, opa_key_file, publish_request, spawn_on, target,
    test_settings,
};
use policyhub::grpc::proto;

crate::on_both_backends_given_the_backend!(
    a_rego_policy_drafted_from_a_directory_is_checked_published_and_signed,
    a_module_that_does_not_compile_is_refused_naming_its_file_line_and_column,
    an_activation_whose_data_clashes_with_another_policy_is_refused_and_changes_nothing,
    a_failing_test_of_the_policy_refuses_its_publication_as_opa_test_fails_it,
);

/// A server serving `payments` to OPA, its bundle owning `payments`.
async fn server(backend: Backend) -> TestApp {
    spawn_on(TestDatabase::new(backend).await, |settings| {
        settings.opa.namespaces = [(
            "payments".to_owned(),
            OpaNamespace {
                roots: vec!["payments".into()],
                ..OpaNamespace::default()
            },
        )]
        .into();
        settings.signing.opa_key_files = vec![opa_key_file(&settings.data_dir)];
    })
    .await
}

const ALLOW: &str = "package payments.authz\n\n\
    default allow := false\n\n\
    allow if input.amount <= data.payments.limits.max\n";

async fn a_rego_policy_drafted_from_a_directory_is_checked_published_and_signed(backend: Backend) {
    let app = server(backend).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("authz")).unwrap();
    std::fs::create_dir_all(dir.path().join("payments/limits")).unwrap();
    std::fs::write(dir.path().join("authz/allow.rego"), ALLOW).unwrap();
    std::fs::write(
        dir.path().join("payments/limits/data.json"),
        r#"{"max": 500}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not part of the bundle").unwrap();
    let path = dir.path().display().to_string();
    policyhub(&app, &["draft", "payments/authz", &path]).success();
    policyhub(
        &app,
        &[
            "publish",
            "payments/authz",
            "--label",
            "1.0.0",
            "--activate",
        ],
    )
    .success();
    let active = app.get_active("payments", "authz").await.unwrap();
    // The signed bundle carries the body as drafted: the modules and the
    // data document the directory made.
    use base64::Engine as _;
    let payload = active.jws.split('.').nth(1).unwrap();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let body = claims["body"].clone();
    assert_eq!(
        body,
        json!({
            "modules": {"authz/allow.rego": ALLOW},
            "data": {"payments": {"limits": {"max": 500}}},
        })
    );
    // A namespace not served to OPA takes any JSON object, as before.
    app.draft("team", "limits", json!({"modules": 1, "max": 2}))
        .await;
}

async fn a_module_that_does_not_compile_is_refused_naming_its_file_line_and_column(
    backend: Backend,
) {
    let app = server(backend).await;
    app.draft(
        "payments",
        "authz",
        json!({"modules": {"authz/allow.rego": ALLOW}}),
    )
    .await;
    let before = app.db_state().await;
    let cases = [
        (
            json!({"modules": {"authz/allow.rego": "package payments.authz\n\nallow if {\n  input.user ==\n}\n"}}),
            "body.modules[\"authz/allow.rego\"]",
            "line 5, column 1: ",
        ),
        (
            json!({"modules": {"authz/allow.rego": "package payments.authz\n\nallow if x > 1\n"}}),
            "body.modules",
            "line 3",
        ),
        (
            json!({"modules": {"billing.rego": "package billing\n\nallow := true\n"}}),
            "body.modules[\"billing.rego\"]",
            "its package billing is not under the namespace's bundle roots (payments)",
        ),
        (
            json!({"modules": {"authz/allow.rego": ALLOW}, "data": [1]}),
            "body.data",
            "must be a JSON object",
        ),
        (
            json!({"policy": "allow"}),
            "body.policy",
            "holds only `modules`",
        ),
        (
            json!({"data": {"billing": {"max": 1}}}),
            "body.data.billing",
            "is not under the namespace's bundle roots (payments)",
        ),
    ];
    for (body, field, said) in cases {
        let refused = app.try_draft("payments", "authz", body).await;
        let status = refused.as_ref().err().cloned();
        let message = expect_code(refused, Code::InvalidArgument);
        let details = tonic_types::StatusExt::get_error_details(&status.unwrap());
        let violation = &details
            .bad_request()
            .expect("a BadRequest")
            .field_violations[0];
        assert_eq!(violation.field, field, "{message}");
        assert!(violation.description.contains(said), "{message}");
    }
    assert_eq!(app.db_state().await, before, "nothing stored");
}

/// Two policies of a namespace served to OPA share its one data document:
/// an activation that would give one path two values is refused before
/// anything is written, by Activate and by Publish's activation alike, and
/// the namespace's bundle stays the one served.
async fn an_activation_whose_data_clashes_with_another_policy_is_refused_and_changes_nothing(
    backend: Backend,
) {
    let app = server(backend).await;
    let limits = json!({
        "modules": {"authz/allow.rego": ALLOW},
        "data": {"payments": {"limits": {"max": 500}}},
    });
    app.release("payments", "limits", limits, true).await;
    // Sharing an object is fine: each policy gives its own paths.
    let fees = json!({"data": {"payments": {"fees": {"card": 1}}}});
    app.release("payments", "fees", fees, true).await;
    let clash = json!({"data": {"payments": {"limits": {"max": 9000}}}});
    let version = app.release("payments", "fees", clash, false).await;
    let another = json!({"data": {"payments": {"limits": 1}}});
    app.draft("payments", "fees", another).await;
    let before = app.db_state().await;
    let bundle = async || {
        let request = proto::GetOpaBundleRequest {
            namespace: "payments".into(),
            ..Default::default()
        };
        app.bundle
            .clone()
            .get_opa_bundle(request)
            .await
            .unwrap()
            .into_inner()
    };
    let served = bundle().await;

    let refused = app
        .try_activate(vec![target("payments", "fees", version.version)])
        .await;
    let message = expect_code(refused, Code::FailedPrecondition);
    assert!(
        message.contains("policies fees and limits both give data.payments.limits.max"),
        "{message}"
    );
    let refused = app
        .try_publish(publish_request("payments", "fees", "", true))
        .await;
    let message = expect_code(refused, Code::FailedPrecondition);
    assert!(
        message.contains("both give data.payments.limits"),
        "{message}"
    );
    // A cohort's bundle holds the candidate beside the stable versions:
    // a rollout of it is refused at its start, not at its completion.
    let rollout = proto::StartRolloutRequest {
        namespace: "payments".into(),
        targets: vec![proto::RolloutTargetRequest {
            name: "fees".into(),
            selector: Some(proto::rollout_target_request::Selector::Version(
                version.version,
            )),
            expected_active_version: None,
        }],
        steps: vec![crate::rollouts::step(
            10,
            std::time::Duration::from_secs(60),
        )],
        reason: "canary the clash".into(),
        ..Default::default()
    };
    let refused = app.policy.clone().start_rollout(rollout).await;
    let message = expect_code(refused, Code::FailedPrecondition);
    assert!(
        message.contains("policies fees and limits both give data.payments.limits.max"),
        "{message}"
    );

    assert_eq!(app.db_state().await, before, "nothing written");
    assert_eq!(bundle().await.etag, served.etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_bundle_roots_keep_the_server_from_starting() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut settings = test_settings(&database);
    settings.opa.namespaces = [
        ("payments", vec!["payments"]),
        ("cards", vec!["payments/cards"]),
    ]
    .into_iter()
    .map(|(name, roots)| {
        (
            name.to_owned(),
            OpaNamespace {
                roots: roots.into_iter().map(str::to_owned).collect(),
                ..OpaNamespace::default()
            },
        )
    })
    .collect();
    let refused = policyhub::startup::Application::build(settings)
        .await
        .err()
        .expect("a server on overlapping roots");
    let why = format!("{refused:#}");
    assert!(
        why.contains("opa.namespaces.payments.roots: payments overlaps payments/cards of opa.namespaces.cards"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opa_namespaces_on_postgres_need_shared_opa_keys_to_start() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let mut settings = test_settings(&database);
    settings.opa.namespaces = [(
        "payments".to_owned(),
        OpaNamespace {
            roots: vec!["payments".into()],
            ..OpaNamespace::default()
        },
    )]
    .into();
    let refused = policyhub::startup::Application::build(settings.clone())
        .await
        .err()
        .expect("a server on PostgreSQL generating its own OPA key");
    let why = format!("{refused:#}");
    assert!(
        why.contains("opa.namespaces on PostgreSQL needs signing.opa_key_files"),
        "{why}"
    );
    assert!(
        !settings.data_dir.join("opa-signing-key.pem").exists(),
        "no key generated"
    );
    // The key the message says how to make is one the server takes.
    let key = settings.data_dir.join("opa.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .status()
        .expect("run openssl");
    assert!(made.success());
    settings.signing.opa_key_files = vec![key];
    policyhub::startup::Application::build(settings)
        .await
        .expect("a server with its OPA key from a file");
}

/// The tests of a policy (rules named `test_…`) run at publish: a failing
/// one refuses the publication naming it and OPA's verdict, which real
/// `opa test` gives the same files; passing tests publish.
async fn a_failing_test_of_the_policy_refuses_its_publication_as_opa_test_fails_it(
    backend: Backend,
) {
    let app = server(backend).await;
    let tests = "package payments.authz_test\n\n\
        import data.payments.authz\n\n\
        test_a_small_amount_is_allowed if authz.allow with input as {\"amount\": 10}\n\n\
        test_a_large_amount_is_allowed if authz.allow with input as {\"amount\": 10000}\n\n\
        # test_in_a_comment is not a rule\n\
        test_a_large_amount_is_refused if not authz.allow with input as {\"amount\": 10000}\n";
    let body = json!({
        "modules": {"authz/allow.rego": ALLOW, "authz/allow_test.rego": tests},
        "data": {"payments": {"limits": {"max": 500}}},
    });
    app.draft("payments", "authz", body.clone()).await;
    let before = app.db_state().await;
    let refused = app
        .try_publish(publish_request("payments", "authz", "", false))
        .await;
    let status = refused.as_ref().err().cloned();
    let message = expect_code(refused, Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&status.unwrap());
    let violations = &details
        .bad_request()
        .expect("a BadRequest")
        .field_violations;
    assert_eq!(violations.len(), 1, "{message}");
    assert_eq!(
        violations[0].field,
        "body.modules[\"authz/allow_test.rego\"]"
    );
    assert_eq!(
        violations[0].description,
        "data.payments.authz_test.test_a_large_amount_is_allowed: FAIL (undefined)"
    );
    assert_eq!(app.db_state().await, before, "nothing published");

    // Real OPA fails the same test, and only it.
    let dir = tempfile::tempdir().unwrap();
    for (path, source) in body["modules"].as_object().unwrap() {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, source.as_str().unwrap()).unwrap();
    }
    std::fs::write(dir.path().join("data.json"), body["data"].to_string()).unwrap();
    let opa = std::process::Command::new(crate::opa::opa_binary())
        .args(["test", "--format", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let results: serde_json::Value = serde_json::from_slice(&opa.stdout).unwrap();
    let failed: Vec<String> = results
        .as_array()
        .unwrap()
        .iter()
        .filter(|result| result["fail"] == true)
        .map(|result| {
            format!(
                "{}.{}",
                result["package"].as_str().unwrap(),
                result["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        failed,
        ["data.payments.authz_test.test_a_large_amount_is_allowed"]
    );

    // Without the failing test, the tests pass and the version publishes.
    let mut passing = body.clone();
    passing["modules"]["authz/allow_test.rego"] = json!(tests.replace(
        "test_a_large_amount_is_allowed if authz.allow with input as {\"amount\": 10000}\n\n",
        ""
    ));
    app.draft("payments", "authz", passing).await;
    app.try_publish(publish_request("payments", "authz", "", false))
        .await
        .expect("a policy whose tests pass publishes");
}
