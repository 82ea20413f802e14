//! mTLS with SPIFFE IDs: a client certificate's `spiffe://` URI SAN is a
//! subject that role bindings match, with no token.

use policyhub::grpc::proto::{
    self, GetActiveRequest, WhoAmIRequest, bundle_service_client::BundleServiceClient,
    policy_service_client::PolicyServiceClient,
};
use serde_json::json;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use super::with_token;
use crate::helpers::{Backend, TestDatabase, publish_request, test_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_id_is_a_subject_bindings_match() {
    let dir = tempfile::tempdir().unwrap();
    crate::auth::certificates(dir.path());
    let path = |name: &str| dir.path().join(name);
    let read = |name: &str| std::fs::read(path(name)).unwrap();
    std::fs::write(
        path("bindings.toml"),
        "[[bindings]]\nname = \"payments-mesh\"\n\
         spiffe_id = \"spiffe://example.org/ns/payments/*\"\ngrants = [\"payments:reader\"]\n",
    )
    .unwrap();
    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut settings = test_settings(&database);
    settings.insecure = false;
    settings.auth.bindings_file = Some(path("bindings.toml"));
    settings.tls = Some(policyhub::config::TlsSettings {
        cert_file: path("server.crt"),
        key_file: path("server.key"),
        client_ca_file: Some(path("ca.crt")),
    });
    let application = policyhub::startup::Application::build(settings)
        .await
        .unwrap();
    let address = application.address();
    let secret = std::fs::read_to_string(
        database
            .data_dir
            .path()
            .join(policyhub::config::GENERATED_SECRET_FILE),
    )
    .unwrap();
    tokio::spawn(application.run_until_stopped(std::future::pending()));
    let connect = |certificate: &str| {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                read(&format!("{certificate}.crt")),
                read(&format!("{certificate}.key")),
            ));
        Channel::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect_lazy()
    };

    // An admin of the local issuer publishes, over a plain client
    // certificate: the token speaks, not the certificate.
    let now = chrono::Utc::now().timestamp();
    let admin = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": policyhub::config::LOCAL_ISSUER, "aud": "policyhub", "sub": "root",
            "roles": ["*:admin"], "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.trim().as_bytes()),
    )
    .unwrap();
    let mut policy = PolicyServiceClient::new(connect("client"));
    let draft = proto::DraftRequest {
        namespace: "payments".into(),
        name: "limits".into(),
        body: Some(policyhub::grpc::convert::json_to_struct(&json!({"max": 1}))),
        ..Default::default()
    };
    policy.draft(with_token(draft, &admin)).await.unwrap();
    let mut publish = publish_request("payments", "limits", "", true);
    publish.reason = "seed".into();
    policy.publish(with_token(publish, &admin)).await.unwrap();

    let get_active = |channel: Channel| async move {
        BundleServiceClient::new(channel)
            .get_active(GetActiveRequest {
                namespace: "payments".into(),
                name: "limits".into(),
                ..Default::default()
            })
            .await
    };
    // The payments workload's SVID: bound, no token needed.
    let bundle = get_active(connect("payments-api")).await.unwrap();
    assert_eq!(bundle.into_inner().version, 1);
    let me = PolicyServiceClient::new(connect("payments-api"))
        .who_am_i(WhoAmIRequest {
            namespace: "payments".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.subject.as_str(), me.issuer.as_str()),
        (
            "spiffe://example.org/ns/payments/sa/api",
            "client certificate"
        )
    );
    assert_eq!(me.held_grants[0].granted_by, "binding \"payments-mesh\"");
    // Another namespace's SVID: authenticated, granted nothing here.
    let denied = get_active(connect("search-api")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // A certificate without a SPIFFE ID, and no token: who is it?
    let unknown = get_active(connect("client")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
}
