//! Authentication, per-namespace roles and quotas, against a server that
//! trusts one EdDSA token issuer.

use std::{path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use policyhub::grpc::{
    convert::json_to_struct,
    proto::{self, WatchEventKind},
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::helpers::{Backend, TestApp, TestDatabase, next_message, spawn_on, target};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "policyhub";

/// A token issuer with an Ed25519 key, and the JWKS file the server trusts.
pub(crate) struct Issuer {
    key: EncodingKey,
    public_key: Vec<u8>,
    jwks_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Issuer {
    pub(crate) fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public_key = pair.public_key().as_ref().to_vec();
        let dir = tempfile::tempdir().unwrap();
        let jwks_file = dir.path().join("issuer-jwks.json");
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "issuer-1", "alg": "EdDSA",
            "use": "sig", "x": URL_SAFE_NO_PAD.encode(&public_key)}]});
        std::fs::write(&jwks_file, jwks.to_string()).unwrap();
        Issuer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public_key,
            jwks_file,
            _dir: dir,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("issuer-1".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    pub(crate) fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.sign(&claims(subject, json!(roles)))
    }
}

fn claims(subject: &str, roles: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "roles": roles, "iat": now, "exp": now + 600})
}

pub(crate) async fn secured_app(
    issuer: &Issuer,
    configure: impl FnOnce(&mut policyhub::config::Settings),
) -> TestApp {
    secured_app_on(Backend::Sqlite, issuer, configure).await
}

/// As `secured_app`, on `backend`.
pub(crate) async fn secured_app_on(
    backend: Backend,
    issuer: &Issuer,
    configure: impl FnOnce(&mut policyhub::config::Settings),
) -> TestApp {
    let jwks_file = issuer.jwks_file.clone();
    spawn_on(TestDatabase::new(backend).await, move |settings| {
        settings.insecure = false;
        settings.auth.jwks_file = Some(jwks_file);
        settings.auth.issuer = ISSUER.into();
        settings.auth.audience = AUDIENCE.into();
        configure(settings);
    })
    .await
}

/// A request carrying `token` as its bearer credential (none for `""`).
pub(crate) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if !token.is_empty() {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn draft_request(namespace: &str, name: &str, value: u32) -> proto::DraftRequest {
    proto::DraftRequest {
        requirements: Vec::new(),
        namespace: namespace.into(),
        name: name.into(),
        body: Some(json_to_struct(&json!({ "v": value }))),
        change_notes: String::new(),
        idempotency_key: String::new(),
    }
}

async fn draft(
    app: &TestApp,
    token: &str,
    namespace: &str,
    name: &str,
) -> Result<proto::DraftResponse, Status> {
    Ok(app
        .policy
        .clone()
        .draft(with_token(draft_request(namespace, name, 1), token))
        .await?
        .into_inner())
}

/// Seeds team-a/x and team-b/y, each published and active, as an admin.
pub(crate) async fn seed(app: &TestApp, admin: &str) {
    for (namespace, name) in [("team-a", "x"), ("team-b", "y")] {
        draft(app, admin, namespace, name).await.unwrap();
        let mut publish = crate::helpers::publish_request(namespace, name, "", true);
        publish.reason = "seed".into();
        app.policy
            .clone()
            .publish(with_token(publish, admin))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_are_refused_with_the_right_code_and_change_nothing() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let admin = issuer.token("root", &["*:admin"]);
    seed(&app, &admin).await;
    let before = app.db_state().await;
    let now = chrono::Utc::now().timestamp();
    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("mallory", json!(["*:admin"])).to_string());
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory", json!(["*:admin"])),
        &EncodingKey::from_secret(&issuer.public_key),
    )
    .unwrap();
    let with = |change: Value| {
        let mut claims = claims("mallory", json!(["*:admin"]));
        for (key, value) in change.as_object().unwrap() {
            claims[key] = value.clone();
        }
        issuer.sign(&claims)
    };
    let unauthenticated = [
        ("no token", String::new()),
        ("malformed token", "not.a.token".to_owned()),
        ("expired", with(json!({"exp": now - 3600}))),
        ("not yet valid", with(json!({"nbf": now + 3600}))),
        ("wrong issuer", with(json!({"iss": "https://evil.test"}))),
        ("wrong audience", with(json!({"aud": "someone-else"}))),
        ("alg none", format!("{header_none}.{payload}.")),
        (
            "hs256 signed with the issuer's public key",
            hs256_with_public_key,
        ),
        (
            "roles claim of the wrong type",
            with(json!({"roles": "*:admin"})),
        ),
        ("roles claim with a non-string", with(json!({"roles": [7]}))),
        ("no subject", with(json!({"sub": ""}))),
        (
            "signed by another key",
            Issuer::new().token("mallory", &["*:admin"]),
        ),
    ];
    for (attack, token) in &unauthenticated {
        let status = draft(&app, token, "team-a", "x").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{attack}: {status:?}");
        let status = app
            .bundle
            .clone()
            .get_active(with_token(
                proto::GetActiveRequest {
                    namespace: "team-a".into(),
                    name: "x".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{attack}: {status:?}");
    }

    let a_reader = issuer.token("reader-a", &["team-a:reader"]);
    let a_author = issuer.token("author-a", &["team-a:author"]);
    let a_admin = issuer.token("admin-a", &["team-a:admin"]);
    let denied: Vec<(&str, Result<(), Status>)> = vec![
        (
            "namespace A token reads B",
            app.bundle
                .clone()
                .get_active(with_token(
                    proto::GetActiveRequest {
                        namespace: "team-b".into(),
                        name: "y".into(),
                        ..Default::default()
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace A token writes B",
            draft(&app, &a_admin, "team-b", "y").await.map(drop),
        ),
        (
            "namespace A token watches B",
            app.bundle
                .clone()
                .watch_active(with_token(
                    proto::WatchActiveRequest {
                        namespace: "team-b".into(),
                        ..Default::default()
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace A token gets a policy of B",
            app.policy
                .clone()
                .get_policy(with_token(
                    proto::GetPolicyRequest {
                        namespace: "team-b".into(),
                        name: "y".into(),
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace A token lists B",
            app.policy
                .clone()
                .list_policies(with_token(
                    proto::ListPoliciesRequest {
                        namespace: "team-b".into(),
                        ..Default::default()
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "reader activates",
            app.policy
                .clone()
                .activate(with_token(
                    proto::ActivateRequest {
                        targets: vec![target("team-a", "x", 1)],
                        ..Default::default()
                    },
                    &a_reader,
                ))
                .await
                .map(drop),
        ),
        (
            "reader drafts",
            draft(&app, &a_reader, "team-a", "x").await.map(drop),
        ),
        (
            "author publishes",
            app.policy
                .clone()
                .publish(with_token(
                    crate::helpers::publish_request("team-a", "x", "", false),
                    &a_author,
                ))
                .await
                .map(drop),
        ),
        (
            "activation spanning a namespace the caller may not touch",
            app.policy
                .clone()
                .activate(with_token(
                    proto::ActivateRequest {
                        targets: vec![target("team-a", "x", 1), target("team-b", "y", 1)],
                        ..Default::default()
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace admin rotates the deployment's signing key",
            app.policy
                .clone()
                .rotate_signing_key(with_token(
                    proto::RotateSigningKeyRequest::default(),
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace admin revokes one of the deployment's signing keys",
            app.policy
                .clone()
                .revoke_signing_key(with_token(
                    proto::RevokeSigningKeyRequest {
                        key_id: "some-key".into(),
                        ..Default::default()
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace admin declares the deployment restored",
            app.policy
                .clone()
                .record_restore(with_token(
                    proto::RecordRestoreRequest {
                        reason: "restored".into(),
                    },
                    &a_admin,
                ))
                .await
                .map(drop),
        ),
        (
            "namespace admin takes a backup of every namespace",
            app.policy
                .clone()
                .backup(with_token(proto::BackupRequest {}, &a_admin))
                .await
                .map(drop),
        ),
    ];
    for (attack, result) in denied {
        let status = result.expect_err(attack);
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{attack}: {status:?}"
        );
    }
    assert_eq!(app.db_state().await, before, "no attack changed anything");

    // The verified subject is the actor; nothing else the client says counts.
    let mut request = with_token(draft_request("team-a", "x", 2), &a_author);
    request
        .metadata_mut()
        .insert("x-actor", "someone-else".parse().unwrap());
    app.policy.clone().draft(request).await.unwrap();
    let events = app
        .policy
        .clone()
        .list_events(with_token(
            proto::ListEventsRequest {
                namespace: "team-a".into(),
                ..Default::default()
            },
            &a_reader,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events[0].actor, "author-a");
    let by_author = app
        .policy
        .clone()
        .list_events(with_token(
            proto::ListEventsRequest {
                namespace: "team-a".into(),
                actor: "author-a".into(),
                ..Default::default()
            },
            &a_reader,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!by_author.is_empty() && by_author.len() < events.len());
    assert!(by_author.iter().all(|event| event.actor == "author-a"));
    let policy = app
        .policy
        .clone()
        .get_policy(with_token(
            proto::GetPolicyRequest {
                namespace: "team-a".into(),
                name: "x".into(),
            },
            &a_reader,
        ))
        .await
        .expect("a reader gets a policy")
        .into_inner();
    assert_eq!(
        (policy.namespace.as_str(), policy.name.as_str()),
        ("team-a", "x")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_watches_only_show_readable_namespaces() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let admin = issuer.token("root", &["*:admin"]);
    seed(&app, &admin).await;
    let a_reader = issuer.token("reader-a", &["team-a:reader"]);

    let policies = app
        .policy
        .clone()
        .list_policies(with_token(proto::ListPoliciesRequest::default(), &a_reader))
        .await
        .unwrap()
        .into_inner()
        .policies;
    let namespaces: Vec<_> = policies
        .iter()
        .map(|policy| policy.namespace.as_str())
        .collect();
    assert_eq!(namespaces, ["team-a"]);
    let events = app
        .policy
        .clone()
        .list_events(with_token(proto::ListEventsRequest::default(), &a_reader))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|event| event.namespace == "team-a"),
        "{events:?}"
    );

    // A watch of namespace A with an empty selector carries A's bundles
    // only, before and after activations in B.
    let mut stream = app
        .bundle
        .clone()
        .watch_active(with_token(
            proto::WatchActiveRequest {
                namespace: "team-a".into(),
                ..Default::default()
            },
            &a_reader,
        ))
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_message(&mut stream).await;
    assert_eq!(snapshot.kind(), WatchEventKind::Snapshot);
    let snapshot_namespaces: Vec<String> = snapshot
        .decode_bundles()
        .unwrap()
        .into_iter()
        .map(|bundle| bundle.namespace)
        .collect();
    assert_eq!(snapshot_namespaces, ["team-a"]);
    draft(&app, &admin, "team-b", "y").await.unwrap();
    app.policy
        .clone()
        .publish(with_token(
            crate::helpers::publish_request("team-b", "y", "", true),
            &admin,
        ))
        .await
        .unwrap();
    draft(&app, &admin, "team-a", "x").await.unwrap();
    app.policy
        .clone()
        .publish(with_token(
            crate::helpers::publish_request("team-a", "x", "", true),
            &admin,
        ))
        .await
        .unwrap();
    let update = next_message(&mut stream).await;
    let bundles = update.decode_bundles().unwrap();
    assert_eq!(bundles.len(), 1);
    assert_eq!(
        (bundles[0].namespace.as_str(), bundles[0].version),
        ("team-a", 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_quota_refuses_one_more_stream_per_subject() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |settings| {
        settings.quotas.max_streams_per_subject = 2
    })
    .await;
    let reader = issuer.token("runtime-1", &["team-a:reader"]);
    let other = issuer.token("runtime-2", &["team-a:reader"]);
    let watch = |token: String| {
        let mut client = app.bundle.clone();
        async move {
            client
                .watch_active(with_token(
                    proto::WatchActiveRequest {
                        namespace: "team-a".into(),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(|response| response.into_inner())
        }
    };
    let first = watch(reader.clone()).await.unwrap();
    let _second = watch(reader.clone()).await.unwrap();
    let refused = watch(reader.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_streams_per_subject"),
        "{}",
        refused.message()
    );
    assert!(watch(other).await.is_ok(), "the quota is per subject");
    drop(first);
    // The server notices the closed stream and frees its slot.
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(stream) = watch(reader.clone()).await {
            reopened = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_over_the_rate_limit_are_resource_exhausted() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |settings| {
        settings.quotas.mutations_per_second = 0.01;
        settings.quotas.mutation_burst = 3.0;
    })
    .await;
    let author = issuer.token("ci", &["team-a:author"]);
    for _ in 0..3 {
        draft(&app, &author, "team-a", "x").await.unwrap();
    }
    let before = app.db_state().await;
    let refused = draft(&app, &author, "team-a", "x").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("mutations_per_second"),
        "{}",
        refused.message()
    );
    assert_eq!(app.db_state().await, before);
    // Reads are not rate limited.
    let read = app
        .policy
        .clone()
        .list_versions(with_token(
            proto::ListVersionsRequest {
                namespace: "team-a".into(),
                name: "x".into(),
                ..Default::default()
            },
            &author,
        ))
        .await;
    assert!(read.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer_without_a_token() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let listed = std::process::Command::new("grpcurl")
        .args(["-plaintext", &app.address.to_string(), "list"])
        .output()
        .expect("grpcurl is on PATH (./scripts/test installs it)");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_local_token_works_against_the_generated_secret() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let data_dir = database.data_dir.path().to_owned();
    let app = spawn_on(database, |settings| settings.insecure = false).await;
    let minted = std::process::Command::new(crate::helpers::policyhub_binary())
        .args([
            "token",
            "--subject",
            "alice",
            "--role",
            "team-a:author",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let version = draft(&app, &token, "team-a", "x")
        .await
        .unwrap()
        .version
        .unwrap();
    assert_eq!(version.created_by, "alice");
    assert_eq!(
        draft(&app, &token, "team-b", "x").await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

/// A CA, a server certificate for 127.0.0.1, a client certificate and two
/// with SPIFFE IDs, made with the openssl command.
pub(crate) fn certificates(dir: &std::path::Path) {
    let run = |args: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("openssl {args}"))
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed");
        assert!(status.success(), "openssl {args}");
    };
    run(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
         -days 1 -subj /CN=test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
    );
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ),
        ("client", "clientAuth", "subjectAltName=DNS:runtime-1"),
        // X.509-SVIDs, as a service mesh issues them.
        (
            "payments-api",
            "clientAuth",
            "subjectAltName=URI:spiffe://example.org/ns/payments/sa/api",
        ),
        (
            "search-api",
            "clientAuth",
            "subjectAltName=URI:spiffe://example.org/ns/search/sa/api",
        ),
    ] {
        run(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name}"
        ));
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("{san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1 -extfile {name}.ext"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plaintext_and_mtls_refuses_clients_without_a_certificate() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name);
    let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let issuer = Issuer::new();
    let tls = policyhub::config::TlsSettings {
        cert_file: path("server.crt"),
        key_file: path("server.key"),
        client_ca_file: Some(path("ca.crt")),
    };
    let address = {
        let jwks_file = issuer.jwks_file.clone();
        let database = TestDatabase::new(Backend::Sqlite).await;
        let mut settings = crate::helpers::test_settings(&database);
        settings.insecure = false;
        settings.auth.jwks_file = Some(jwks_file);
        settings.auth.issuer = ISSUER.into();
        settings.tls = Some(tls);
        let application = policyhub::startup::Application::build(settings)
            .await
            .unwrap();
        let address = application.address();
        tokio::spawn(async move {
            let _database = database;
            application.run_until_stopped(std::future::pending()).await
        });
        address
    };
    let token = issuer.token("runtime-1", &["team-a:reader"]);
    let call = |channel: Channel| {
        let token = token.clone();
        async move {
            proto::bundle_service_client::BundleServiceClient::new(channel)
                .get_signing_keys(with_token(proto::GetSigningKeysRequest {}, &token))
                .await
        }
    };

    // Plaintext on the TLS port: no gRPC exchange happens.
    let plaintext = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        assert!(
            call(channel).await.is_err(),
            "a plaintext call succeeded on the TLS port"
        );
    }

    let tls_to = |identity: Option<Identity>| {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .domain_name("localhost");
        if let Some(identity) = identity {
            config = config.identity(identity);
        }
        Channel::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(config)
            .unwrap()
    };
    // TLS without a client certificate: the handshake or the call fails.
    if let Ok(channel) = tls_to(None).connect().await {
        assert!(
            call(channel).await.is_err(),
            "mTLS accepted a client without a certificate"
        );
    }
    // With one signed by the CA: accepted.
    let channel = tls_to(Some(Identity::from_pem(
        read("client.crt"),
        read("client.key"),
    )))
    .connect()
    .await
    .expect("an mTLS client with a certificate connects");
    let keys = call(channel)
        .await
        .expect("an mTLS client with a certificate is served");
    assert!(!keys.into_inner().keys.is_empty());

    // The runtime library's own TLS settings: with the client certificate
    // its stream opens; without one it never does.
    let first_event = |tls: policyhub_runtime::Tls| {
        let token = token.clone();
        let subscription =
            policyhub_runtime::Subscription::new(format!("https://{address}"), "team-a")
                .tls(tls)
                .token(std::sync::Arc::new(move || Some(token.clone())));
        async move {
            let mut events = std::pin::pin!(subscription.events());
            futures::StreamExt::next(&mut events).await
        }
    };
    let authority = || {
        policyhub_runtime::Tls::new()
            .ca_certificate(read("ca.crt"))
            .domain_name("localhost")
    };
    let with_certificate = tokio::time::timeout(
        Duration::from_secs(10),
        first_event(authority().identity(read("client.crt"), read("client.key"))),
    )
    .await
    .expect("the library's stream opens over mTLS");
    assert!(
        matches!(
            with_certificate,
            Some(Ok(policyhub_runtime::Event::Connected { .. }))
        ),
        "{with_certificate:?}"
    );
    let without = tokio::time::timeout(Duration::from_secs(10), first_event(authority()))
        .await
        .expect("the library says why it cannot connect");
    assert!(
        matches!(
            without,
            Some(Ok(policyhub_runtime::Event::Disconnected { .. }))
        ),
        "{without:?}"
    );
}

/// A runtime id belongs to the subject whose token opened its stream
/// (docs/src/contributing/design.md#runtimes-and-rollouts). Another reader
/// can neither report for it (faking or hiding a fleet's rejections) nor open
/// a stream under it, and a reader of another namespace cannot report at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_id_belongs_to_the_subject_that_opened_its_stream() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let admin = issuer.token("admin", &["*:admin"]);
    seed(&app, &admin).await;
    let owner = issuer.token("runtime-sa", &["team-a:reader"]);
    let intruder = issuer.token("intruder", &["team-a:reader"]);
    let outsider = issuer.token("outsider", &["team-b:reader"]);
    let watch_as = |token: String| {
        let mut client = app.bundle.clone();
        async move {
            client
                .watch_active(with_token(
                    proto::WatchActiveRequest {
                        namespace: "team-a".into(),
                        runtime: Some(proto::RuntimeIdentity {
                            id: "pod-1".into(),
                            labels: Default::default(),
                        }),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .map(|response| response.into_inner())
        }
    };
    // pod-1's report that it rejected version 1 of x because of `error`.
    let rejection = |error: &str| proto::ReportStatusRequest {
        namespace: "team-a".into(),
        runtime_id: "pod-1".into(),
        revision: 1,
        policies: vec![proto::PolicyApplyStatus {
            name: "x".into(),
            version: 1,
            state: proto::ApplyState::Rejected as i32,
            error: error.into(),
            ..Default::default()
        }],
    };
    let report_as = |token: String, error: &'static str| {
        let mut client = app.bundle.clone();
        async move {
            client
                .report_status(with_token(rejection(error), &token))
                .await
        }
    };
    // The same report on a ReportStatusStream: its first answer, or the
    // status that refused it.
    let stream_report_as = |token: String, error: &'static str| {
        let mut client = app.bundle.clone();
        async move {
            let requests = futures::stream::iter([rejection(error)]);
            let mut replies = client
                .report_status_stream(with_token(requests, &token))
                .await?
                .into_inner();
            replies
                .message()
                .await?
                .ok_or_else(|| Status::internal("no answer"))
        }
    };
    let mut stream = watch_as(owner.clone()).await.unwrap();
    next_message(&mut stream).await;

    for (token, error) in [(intruder.clone(), "faked"), (outsider.clone(), "outside")] {
        let refused = stream_report_as(token, error).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let unauthenticated = stream_report_as(String::new(), "anonymous").await;
    assert_eq!(unauthenticated.unwrap_err().code(), Code::Unauthenticated);

    let faked = report_as(intruder.clone(), "faked").await.unwrap_err();
    assert_eq!(faked.code(), Code::PermissionDenied);
    assert!(
        faked.message().contains("runtime-sa"),
        "{}",
        faked.message()
    );
    let taken = watch_as(intruder).await.unwrap_err();
    assert_eq!(taken.code(), Code::PermissionDenied);
    let outside = report_as(outsider, "outside").await.unwrap_err();
    assert_eq!(outside.code(), Code::PermissionDenied);
    let unauthenticated = report_as(String::new(), "anonymous").await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);

    stream_report_as(owner, "real").await.unwrap();
    let runtimes = app
        .policy
        .clone()
        .list_runtimes(with_token(
            proto::ListRuntimesRequest {
                namespace: "team-a".into(),
                ..Default::default()
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .runtimes;
    assert_eq!(runtimes.len(), 1);
    assert_eq!(runtimes[0].subject, "runtime-sa");
    assert_eq!(runtimes[0].policies[0].error, "real");
}

/// A token that is not a JWT is refused in words a person can act on, not
/// with the JWT library's decoding error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_token_is_described_plainly() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let refused = draft(&app, "abc.def", "team-a", "x").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("invalid token: it is not a JWT")
            && !refused.message().contains("Base64"),
        "{}",
        refused.message()
    );
}

/// Rollout approvals: required when the namespace says so, from a holder of
/// the approver role other than the rollout's creator, and bound to that
/// rollout's pinned targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_need_approvals_from_other_approvers() {
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |settings| {
        settings.rollouts.required_approvals = [("team".to_owned(), 1)].into();
    })
    .await;
    let alice = issuer.token("alice", &["team:operator", "team:approver"]);
    let bob = issuer.token("bob", &["team:approver"]);
    let rita = issuer.token("rita", &["team:reader"]);
    let mut policy = app.policy.clone();
    for (value, activate) in [(1, true), (2, false), (3, false)] {
        policy
            .draft(with_token(draft_request("team", "limits", value), &alice))
            .await
            .unwrap();
        policy
            .publish(with_token(
                proto::PublishRequest {
                    namespace: "team".into(),
                    name: "limits".into(),
                    activate,
                    ..Default::default()
                },
                &alice,
            ))
            .await
            .unwrap();
    }
    let start = |version: u32| proto::StartRolloutRequest {
        namespace: "team".into(),
        targets: vec![proto::RolloutTargetRequest {
            name: "limits".into(),
            selector: Some(proto::rollout_target_request::Selector::Version(version)),
            expected_active_version: None,
        }],
        steps: vec![proto::RolloutStep {
            percentage: 100,
            label_selector: String::new(),
            bake: Some(Duration::from_secs(3600).try_into().unwrap()),
            analyses: Vec::new(),
        }],
        ..Default::default()
    };
    let control = |id: &str| proto::RolloutControlRequest {
        namespace: "team".into(),
        id: id.into(),
        reason: "reviewed".into(),
    };
    let pending = policy
        .start_rollout(with_token(start(2), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pending.state(), proto::RolloutState::PendingApproval);
    assert_eq!(pending.required_approvals, 1);
    assert!(pending.step_revisions.is_empty());

    let own = policy
        .approve_rollout(with_token(control(&pending.id), &alice))
        .await;
    let status = own.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("alice started rollout"),
        "{}",
        status.message()
    );
    let reader = policy
        .approve_rollout(with_token(control(&pending.id), &rita))
        .await;
    assert_eq!(reader.unwrap_err().code(), Code::PermissionDenied);

    let approved = policy
        .approve_rollout(with_token(control(&pending.id), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.state(), proto::RolloutState::Running);
    assert_eq!(approved.approvals[0].by, "bob");
    let again = policy
        .approve_rollout(with_token(control(&pending.id), &bob))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::FailedPrecondition);

    // The approval was for version 2's digest: version 3 needs its own.
    policy
        .promote_rollout(with_token(control(&pending.id), &alice))
        .await
        .unwrap();
    let next = policy
        .start_rollout(with_token(start(3), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.state(), proto::RolloutState::PendingApproval);
    assert!(next.approvals.is_empty());
}

/// Subscriptions: an operator manages those of its namespace; a
/// deployment-wide one needs the `*:admin` grant; a reader manages none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_the_operator_role_and_admin_for_the_deployment() {
    use policyhub::grpc::proto::subscription_service_client::SubscriptionServiceClient;
    let issuer = Issuer::new();
    let app = secured_app(&issuer, |_| {}).await;
    let operator = issuer.token("olga", &["team:operator"]);
    let reader = issuer.token("rita", &["team:reader"]);
    let admin = issuer.token("ada", &["*:admin"]);
    let mut client = SubscriptionServiceClient::connect(format!("http://{}", app.address))
        .await
        .unwrap();
    let request = |namespace: &str, name: &str| proto::CreateSubscriptionRequest {
        namespace: namespace.into(),
        name: name.into(),
        url: "https://hooks.example.com/in".into(),
        event_kinds: vec![proto::EventKind::Activated as i32],
        ..Default::default()
    };
    client
        .create_subscription(with_token(request("team", "ops"), &operator))
        .await
        .expect("an operator subscribes its namespace");
    for (token, namespace, name) in [
        (&reader, "team", "peek"),
        (&operator, "other", "ops"),
        (&operator, "", "siem"),
    ] {
        let refused = client
            .create_subscription(with_token(request(namespace, name), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{namespace}/{name}");
    }
    client
        .create_subscription(with_token(request("", "siem"), &admin))
        .await
        .expect("an admin subscribes the deployment");
    let listed = client
        .list_subscriptions(with_token(
            proto::ListSubscriptionsRequest {
                namespace: String::new(),
            },
            &operator,
        ))
        .await
        .unwrap_err();
    assert_eq!(listed.code(), Code::PermissionDenied);
}

/// A reader of one namespace proves its own events; another namespace's
/// event and an event that does not exist are refused alike, so such a
/// caller learns nothing of which events exist; a reader of the whole log
/// is told an event does not exist; a caller with no reader grant at all is
/// refused before anything is read.
async fn inclusion_proofs_are_served_to_readers_of_the_event(backend: Backend) {
    let issuer = Issuer::new();
    let app = secured_app_on(backend, &issuer, |_| {}).await;
    let admin = issuer.token("root", &["*:admin"]);
    seed(&app, &admin).await;
    let prove = |event_id: u64, token: String| {
        let mut policy = app.policy.clone();
        async move {
            policy
                .get_inclusion_proof(with_token(
                    proto::GetInclusionProofRequest {
                        event_id,
                        tree_size: 0,
                    },
                    &token,
                ))
                .await
                .map(drop)
                .map_err(|status| status.code())
        }
    };
    let event_of = |namespace: &str| {
        let mut policy = app.policy.clone();
        let request = with_token(
            proto::ListEventsRequest {
                namespace: namespace.into(),
                ..Default::default()
            },
            &admin,
        );
        async move {
            policy
                .list_events(request)
                .await
                .unwrap()
                .into_inner()
                .events[0]
                .id
        }
    };
    let (own, other) = (event_of("team-a").await, event_of("team-b").await);
    let a_reader = issuer.token("reader-a", &["team-a:reader"]);
    let everyone = issuer.token("auditor", &["*:reader"]);
    assert_eq!(prove(own, a_reader.clone()).await, Ok(()));
    assert_eq!(
        prove(other, a_reader.clone()).await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        prove(1 << 40, a_reader.clone()).await,
        Err(Code::PermissionDenied)
    );
    let b_author = issuer.token("author-b", &["team-b:author"]);
    assert_eq!(
        prove(other, b_author.clone()).await,
        Ok(()),
        "a role above reader"
    );
    assert_eq!(prove(own, b_author).await, Err(Code::PermissionDenied));
    assert_eq!(prove(1 << 40, everyone.clone()).await, Err(Code::NotFound));
    assert_eq!(prove(other, everyone).await, Ok(()));
    let nobody = issuer.token("nobody", &[]);
    assert_eq!(prove(own, nobody).await, Err(Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_proofs_are_served_to_readers_of_the_event_on_sqlite() {
    inclusion_proofs_are_served_to_readers_of_the_event(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_proofs_are_served_to_readers_of_the_event_on_postgres() {
    inclusion_proofs_are_served_to_readers_of_the_event(Backend::Postgres).await;
}
