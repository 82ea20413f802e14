//! Identity an organization already has: tokens of several OpenID Connect
//! issuers found through discovery (an identity provider, a Kubernetes
//! cluster), role bindings from their claims, keys that rotate and issuers
//! that go down, and the attacks on all of it, against the real server
//! binary whose log is read.

pub(crate) mod issuer;
mod spiffe;
mod workloads;

use std::{path::PathBuf, time::Duration};

use policyhub::grpc::proto::{
    self, CheckAccessRequest, GetActiveRequest, WhoAmIRequest,
    bundle_service_client::BundleServiceClient, policy_service_client::PolicyServiceClient,
    sign_in_service_client::SignInServiceClient,
};
use serde_json::json;
use tonic::{Code, Request, transport::Channel};

use crate::helpers::{Reaped, free_port, policyhub_binary, wait_until_serving};
use issuer::{Issuer, Key};

/// A `policyhub serve` process with its configuration, bindings and log.
struct Server {
    _child: Reaped,
    channel: Channel,
    port: u16,
    metrics: std::net::SocketAddr,
    http: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Server {
    /// Serves with `auth` (TOML of the `[auth]` section and its
    /// `[[auth.issuers]]`) and `bindings` as its bindings file.
    async fn start(auth: &str, bindings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bindings.toml"), bindings).unwrap();
        let (port, metrics, http) = (free_port(), free_port(), free_port());
        let config = format!(
            "metrics_listen = \"127.0.0.1:{metrics}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             health_check_interval = \"200ms\"\n\n\
             [auth]\nbindings_file = \"{}\"\n{auth}",
            dir.path().join("bindings.toml").display()
        );
        let config_file = dir.path().join("policyhub.toml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = std::process::Command::new(policyhub_binary())
            .arg("serve")
            .arg("--config")
            .arg(&config_file)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .stderr(log)
            .spawn()
            .unwrap();
        let (child, channel) = wait_until_serving(child, port).await;
        Server {
            _child: child,
            channel,
            port,
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            http: format!("127.0.0.1:{http}").parse().unwrap(),
            dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bindings_file(&self) -> PathBuf {
        self.dir.path().join("bindings.toml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap()
    }

    fn policy(&self) -> PolicyServiceClient<Channel> {
        PolicyServiceClient::new(self.channel.clone())
    }

    async fn who(&self, token: &str) -> Result<proto::WhoAmIResponse, tonic::Status> {
        let request = with_token(
            WhoAmIRequest {
                namespace: "payments".into(),
            },
            token,
        );
        Ok(self.policy().who_am_i(request).await?.into_inner())
    }

    async fn get_active(&self, token: &str) -> Result<proto::Bundle, tonic::Status> {
        let request = with_token(
            GetActiveRequest {
                namespace: "payments".into(),
                name: "limits".into(),
                ..Default::default()
            },
            token,
        );
        let reply = BundleServiceClient::new(self.channel.clone())
            .get_active(request)
            .await?;
        Ok(reply.into_inner())
    }

    async fn health(&self, service: &str) -> i32 {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_or(-1, |reply| reply.into_inner().status)
    }
}

/// `curl URL`'s JSON.
fn curl_json(url: &str) -> serde_json::Value {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--fail", url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

pub(super) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// An `[[auth.issuers]]` entry for `issuer`, with `extra` lines.
fn issuer_entry(issuer: &Issuer, extra: &str) -> String {
    format!(
        "\n[[auth.issuers]]\nissuer = \"{}\"\naudiences = [\"policyhub\"]\n{extra}\n",
        issuer.url()
    )
}

fn binding(name: &str, issuer: &Issuer, matcher: &str, grant: &str) -> String {
    format!(
        "[[bindings]]\nname = \"{name}\"\nissuer = \"{}\"\n{matcher}\ngrants = [\"{grant}\"]\n\n",
        issuer.url()
    )
}

/// Publishes and activates payments/limits as `admin`.
async fn seed(server: &Server, admin: &str) {
    let mut policy = server.policy();
    let draft = proto::DraftRequest {
        namespace: "payments".into(),
        name: "limits".into(),
        body: Some(policyhub::grpc::convert::json_to_struct(&json!({"max": 5}))),
        ..Default::default()
    };
    policy.draft(with_token(draft, admin)).await.unwrap();
    let mut publish = crate::helpers::publish_request("payments", "limits", "", true);
    publish.reason = "seed".into();
    policy.publish(with_token(publish, admin)).await.unwrap();
}

/// Polls `check` every 100 ms for up to `seconds`.
async fn eventually(seconds: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..seconds * 10 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_and_workloads_hold_what_their_bindings_give() {
    let idp = Issuer::start("idp").await;
    let cluster = Issuer::start("cluster").await;
    let auth = issuer_entry(
        &idp,
        "client_id = \"policyhub\"\nscopes = [\"openid\", \"groups\", \"offline_access\"]",
    ) + &issuer_entry(&cluster, "claims = []");
    let bindings = binding("admins", &idp, "subject = \"root\"", "*:admin")
        + &binding(
            "payments-operators",
            &idp,
            "claim = \"groups\"\nvalue = \"payments-operators\"",
            "payments:operator",
        )
        + &binding(
            "payments-readers",
            &idp,
            "claim = \"groups\"\nvalue = \"payments-readers\"",
            "payments:reader",
        )
        + &binding(
            "payments-agents",
            &cluster,
            "service_account = \"payments:policyhub-agent\"",
            "payments:reader",
        );
    let server = Server::start(&auth, &bindings).await;
    let root = idp.sign(&idp.claims("root", json!({})));
    seed(&server, &root).await;

    // Where people sign in, asked with no token over HTTP (curl) and gRPC:
    // the issuer with a public client, not the cluster.
    let providers = curl_json(&format!("http://{}/v1/identityProviders", server.http));
    assert_eq!(
        providers,
        json!({"identityProviders": [{"issuer": idp.url(), "clientId": "policyhub",
            "scopes": ["openid", "groups", "offline_access"]}]})
    );
    let listed = SignInServiceClient::new(server.channel.clone())
        .list_identity_providers(proto::ListIdentityProvidersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.identity_providers.len(), 1);

    // A person of the operators' group: the grant, and what gave it.
    let bob = idp.sign(&idp.claims(
        "bob",
        json!({"groups": ["everyone", "payments-operators"], "email": "bob@example.com"}),
    ));
    let me = server.who(&bob).await.unwrap();
    assert_eq!(
        (me.subject.as_str(), me.issuer.as_str(), me.grants.clone()),
        ("bob", idp.url(), vec!["payments:operator".to_owned()])
    );
    assert_eq!(
        me.held_grants[0].granted_by,
        "binding \"payments-operators\""
    );
    assert!(me.allowed_methods.contains(&"Activate".to_owned()));
    let access = server
        .policy()
        .check_access(with_token(
            CheckAccessRequest {
                method: "Activate".into(),
                namespace: "payments".into(),
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(access.allowed, "{access:?}");
    assert!(
        access.reason.contains("binding \"payments-operators\""),
        "{access:?}"
    );

    // A reader reads and may not activate.
    let alice = idp.sign(&idp.claims("alice", json!({"groups": ["payments-readers"]})));
    assert_eq!(server.get_active(&alice).await.unwrap().version, 1);
    let activate = proto::ActivateRequest {
        targets: vec![crate::helpers::target("payments", "limits", 1)],
        ..Default::default()
    };
    let refused = server
        .policy()
        .activate(with_token(activate.clone(), &alice))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A pod's projected ServiceAccount token, bound to policyhub.
    let pod = cluster.service_account_token("payments", "policyhub-agent", "policyhub", 3600);
    assert_eq!(server.get_active(&pod).await.unwrap().version, 1);
    let me = server.who(&pod).await.unwrap();
    assert_eq!(me.subject, "system:serviceaccount:payments:policyhub-agent");
    // Another pod's account, and a token for another audience.
    let other = cluster.service_account_token("payments", "web", "policyhub", 3600);
    let denied = server.get_active(&other).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let vault = cluster.service_account_token("payments", "policyhub-agent", "vault", 3600);
    let refused = server.get_active(&vault).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("audience"), "{refused:?}");

    // The bindings change on disk: in force without a restart.
    let promoted = bindings.replace(
        "value = \"payments-readers\"\ngrants = [\"payments:reader\"]",
        "value = \"payments-readers\"\ngrants = [\"payments:operator\"]",
    );
    assert_ne!(promoted, bindings);
    std::fs::write(server.bindings_file(), &promoted).unwrap();
    assert!(
        eventually(10, async || {
            server
                .policy()
                .activate(with_token(activate.clone(), &alice))
                .await
                .is_ok()
        })
        .await,
        "the new binding takes effect"
    );
    // A file that does not load leaves them in force, and the log says why.
    std::fs::write(server.bindings_file(), "[[bindings]]\nname = 3\n").unwrap();
    assert!(
        eventually(10, async || server
            .log()
            .contains("role bindings not reloaded"))
        .await,
        "{}",
        server.log()
    );
    let me = server.who(&alice).await.unwrap();
    assert_eq!(me.grants, ["payments:operator"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_confused_tokens_are_refused_and_never_logged() {
    let idp = Issuer::start("idp").await;
    let cluster = Issuer::start("cluster").await;
    let auth = issuer_entry(&idp, "min_refresh_interval = \"1m\"")
        + &issuer_entry(&cluster, "claims = []\nmin_refresh_interval = \"1m\"");
    let bindings = binding(
        "admins",
        &idp,
        "claim = \"groups\"\nvalue = \"admins\"",
        "*:admin",
    );
    let server = Server::start(&auth, &bindings).await;
    let admin_claims = idp.claims("mallory", json!({"groups": ["admins"]}));
    // The genuine token works, so each refusal below is the attack's.
    let genuine = idp.sign(&admin_claims);
    server.who(&genuine).await.unwrap();
    let before = idp.fetches() + cluster.fetches();

    let self_made = Key::new("idp-1");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(idp.key().kid.clone());
    let hmac_over_public_key = jsonwebtoken::encode(
        &header,
        &admin_claims,
        &jsonwebtoken::EncodingKey::from_secret(&idp.key().public),
    )
    .unwrap();
    let mut attacks = vec![
        (
            "issuer A's claims signed with issuer B's key",
            cluster.sign(&admin_claims),
            "not signed by a key of its issuer",
        ),
        (
            "issuer A's claims signed with issuer B's key under A's kid",
            cluster.key().sign_as(&idp.key().kid, &admin_claims),
            "signature",
        ),
        (
            "a trusted iss with a self-made key under the issuer's kid",
            self_made.sign(&admin_claims),
            "signature",
        ),
        (
            "HS256 with the issuer's public key as the secret",
            hmac_over_public_key,
            "algorithm",
        ),
        (
            "an untrusted issuer",
            self_made.sign(&json!({"iss": "https://evil.example", "aud": "policyhub",
                "sub": "mallory", "exp": chrono::Utc::now().timestamp() + 600})),
            "issuer",
        ),
    ];
    // The `groups` claim a binding reads must be strings, and few.
    attacks.push((
        "a groups claim of the wrong type",
        idp.sign(&idp.claims("mallory", json!({"groups": {"admins": true}}))),
        "malformed",
    ));
    let many: Vec<String> = (0..1001).map(|i| format!("g{i}")).collect();
    attacks.push((
        "a groups claim of 1,001 entries",
        idp.sign(&idp.claims("mallory", json!({ "groups": many }))),
        "malformed",
    ));
    for (attack, token, said) in &attacks {
        let refused = server.who(token).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{attack}: {refused:?}"
        );
        assert!(refused.message().contains(said), "{attack}: {refused:?}");
    }
    // 10,000 entries do not even fit the transport's bound on headers
    // (16 KiB): the call fails before any token is read, and the server
    // goes on serving.
    let many: Vec<String> = (0..10_000).map(|i| format!("group-{i}")).collect();
    let huge = idp.sign(&idp.claims("mallory", json!({ "groups": many })));
    assert!(server.who(&huge).await.is_err());
    // The server ends the connection that carried them; a call may race
    // that end and be cancelled, and the channel connects again.
    let mut reconnects = 0;
    while let Err(status) = server.who(&genuine).await {
        assert!(
            matches!(status.code(), Code::Cancelled | Code::Unavailable) && reconnects < 5,
            "the server goes on serving: {status:?}"
        );
        reconnects += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A flood of unknown kids fetches each issuer's keys at most once per
    // min_refresh_interval (here a minute: at most once).
    for attempt in 0..50 {
        let kid = format!("unknown-{attempt}");
        let token = cluster.key().sign_as(
            &kid,
            &cluster.claims("system:serviceaccount:x:y", json!({})),
        );
        let refused = server.who(&token).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let after = idp.fetches() + cluster.fetches();
    assert!(after - before <= 2, "{before} → {after} fetches");

    // The log names each reason, and holds no token.
    let log = server.log();
    for reason in [
        "untrusted issuer",
        "has no EdDSA key",
        "signature",
        "1001 values",
    ] {
        assert!(log.contains(reason), "{reason} in:\n{log}");
    }
    for (attack, token, _) in &attacks {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "{attack}: the token is logged");
    }
    assert!(!log.contains(&genuine[genuine.len() - 20..]));
    assert!(!log.contains(&huge[huge.len() - 20..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_on_a_claim_its_issuer_does_not_sign_refuses_to_start() {
    let idp = Issuer::start("idp").await;
    let cluster = Issuer::start("cluster").await;
    let dir = tempfile::tempdir().unwrap();
    let bindings = dir.path().join("bindings.toml");
    std::fs::write(
        &bindings,
        binding(
            "everyone-admin",
            &cluster,
            "claim = \"groups\"\nvalue = \"system:authenticated\"",
            "*:admin",
        ),
    )
    .unwrap();
    let config = dir.path().join("policyhub.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nbindings_file = \"{}\"\n{}{}",
            bindings.display(),
            issuer_entry(&idp, ""),
            issuer_entry(&cluster, "claims = []")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(policyhub_binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("binding \"everyone-admin\"")
            && stderr.contains("is not configured to sign the \"groups\" claim"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart_and_outlive_an_outage() {
    let idp = Issuer::start("idp").await;
    let auth = issuer_entry(
        &idp,
        "refresh_interval = \"1s\"\nmin_refresh_interval = \"1s\"\nkeys_grace_period = \"1h\"",
    );
    let bindings = binding("readers", &idp, "subject = \"ann\"", "*:reader");
    let server = Server::start(&auth, &bindings).await;
    let token = |n: u64| idp.sign(&idp.claims("ann", json!({"n": n})));
    server.who(&token(1)).await.unwrap();
    let issuers = policyhub::startup::ISSUERS_SERVICE;
    assert!(eventually(5, async || server.health(issuers).await == 1).await);

    // The provider rotates: the new key signs at once, and verifies
    // without a restart.
    idp.rotate("idp-2");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rotated = server.who(&token(2)).await.unwrap();
    assert_eq!(rotated.subject, "ann");

    // The provider stops: fresh tokens of known keys keep verifying, and
    // the failed fetches show in the metrics and the health service.
    idp.set_up(false);
    let failures = format!(
        "policyhub_auth_key_fetches_total{{issuer=\"{}\",outcome=\"failure\"}}",
        idp.url()
    );
    assert!(
        eventually(10, async || {
            let metrics = crate::observability::scrape(server.metrics).await;
            metrics
                .lines()
                .any(|line| line.starts_with(&failures) && !line.ends_with(" 0"))
        })
        .await,
        "{}",
        crate::observability::scrape(server.metrics).await
    );
    assert!(eventually(5, async || server.health(issuers).await == 2).await);
    assert_eq!(server.health("").await, 1, "the server itself serves");
    server.who(&token(3)).await.unwrap();
    assert!(server.log().contains("cannot fetch the issuer's keys"));

    // Back up: healthy again.
    idp.set_up(true);
    assert!(eventually(10, async || server.health(issuers).await == 1).await);
    let metrics = crate::observability::scrape(server.metrics).await;
    crate::helpers::promtool_accepts(&metrics);
}
