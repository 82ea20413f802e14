//! An OpenID Connect issuer as a Kubernetes API server is one: a discovery
//! document and a JWKS over HTTP, keys that rotate, and an outage on
//! demand. It signs the tokens the tests present.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

/// One Ed25519 signing key.
pub struct Key {
    pub kid: String,
    encoding: EncodingKey,
    /// The raw public key: what an attacker would use as an HMAC secret.
    pub public: Vec<u8>,
}

impl Key {
    pub fn new(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Key {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": "EdDSA", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&self.public)})
    }

    /// `claims` signed with this key, under `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

struct State {
    url: String,
    /// The published keys; the first signs.
    keys: Mutex<Vec<Arc<Key>>>,
    /// Requests for the JWKS.
    fetches: AtomicUsize,
    /// Whether it answers (503 when down).
    up: AtomicBool,
}

/// A running issuer on a loopback port.
pub struct Issuer {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Issuer {
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(State {
            url,
            keys: Mutex::new(vec![Arc::new(Key::new(&format!("{name}-1")))]),
            fetches: AtomicUsize::new(0),
            up: AtomicBool::new(true),
        });
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Issuer { state, task }
    }

    pub fn url(&self) -> &str {
        &self.state.url
    }

    /// The key that signs now.
    pub fn key(&self) -> Arc<Key> {
        self.state.keys.lock().unwrap()[0].clone()
    }

    /// A new key signs from now on, published first; the old one stays
    /// published.
    pub fn rotate(&self, kid: &str) -> Arc<Key> {
        let key = Arc::new(Key::new(kid));
        self.state.keys.lock().unwrap().insert(0, key.clone());
        key
    }

    /// `claims` signed with the current key.
    pub fn sign(&self, claims: &Value) -> String {
        self.key().sign(claims)
    }

    /// How many times its JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Answers 503 to everything from now on (`false`), or again (`true`).
    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    /// Claims of a token of this issuer for `subject`, valid ten minutes,
    /// with `extra` claims added.
    pub fn claims(&self, subject: &str, extra: Value) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": self.url(), "aud": "policyhub", "sub": subject,
            "iat": now, "nbf": now, "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    }

    /// A projected ServiceAccount token of this cluster (the claim layout
    /// of the kubelet's), for `audience`, valid `seconds`.
    pub fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
        audience: &str,
        seconds: i64,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": self.url(),
            "aud": [audience],
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": uuid::Uuid::new_v4().to_string()},
                "pod": {"name": format!("{account}-0"), "uid": uuid::Uuid::new_v4().to_string()}
            }
        }))
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = |status: u16, body: Value| {
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    };
    if !state.up.load(Ordering::SeqCst) {
        return json(503, json!({"error": "down"}));
    }
    match request.uri().path() {
        "/.well-known/openid-configuration" => json(
            200,
            json!({"issuer": state.url, "jwks_uri": format!("{}/openid/v1/jwks", state.url),
                "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["EdDSA"]}),
        ),
        "/openid/v1/jwks" => {
            state.fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state.keys.lock().unwrap().iter().map(|k| k.jwk()).collect();
            json(200, json!({ "keys": keys }))
        }
        _ => json(404, json!({"error": "not found"})),
    }
}
