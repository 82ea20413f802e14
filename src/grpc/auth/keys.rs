//! An issuer's verification keys: a shared secret, a JWKS from a file, or a
//! JWKS found through OpenID Connect discovery and fetched again on a
//! schedule and on an unknown `kid`, at most once per interval, the last
//! good keys serving for a bounded time while fetching fails.

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use serde::Deserialize;

/// Largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// How long one fetch of a discovery document or JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Algorithms accepted with public keys: asymmetric only, so a token signed
/// with HMAC over a public key (algorithm confusion) never verifies.
pub const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// One public key and the algorithms it verifies.
pub struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// The keys of one fetch or file.
#[derive(Default)]
pub struct KeySet(Vec<Key>);

impl KeySet {
    /// The usable signing keys of a JWKS; a key for encryption, of a
    /// symmetric or unknown type, or that does not parse is skipped, but a
    /// set with none usable is refused.
    pub fn from_jwks(jwks: &JwkSet) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for jwk in &jwks.keys {
            match key(jwk) {
                Ok(key) => keys.push(key),
                Err(error) => skipped.push(format!("{:?}: {error}", jwk.common.key_id)),
            }
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "the JWKS holds no usable signing key ({})",
            if skipped.is_empty() {
                "it is empty".to_owned()
            } else {
                skipped.join("; ")
            }
        );
        Ok(KeySet(keys))
    }

    /// The key that verifies `algorithm` under `kid`.
    pub fn find(&self, kid: Option<&str>, algorithm: Algorithm) -> Option<&DecodingKey> {
        self.0
            .iter()
            .find(|key| {
                key.algorithms.contains(&algorithm) && (kid.is_none() || key.kid.as_deref() == kid)
            })
            .map(|key| &key.key)
    }

    /// Whether some key carries `kid`.
    fn knows(&self, kid: &str) -> bool {
        self.0.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

fn key(jwk: &Jwk) -> anyhow::Result<Key> {
    anyhow::ensure!(
        !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)),
        "an encryption key"
    );
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => ASYMMETRIC[..6].to_vec(),
        AlgorithmParameters::EllipticCurve(curve) => match curve.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => anyhow::bail!("an unsupported curve"),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            anyhow::bail!("a symmetric key: only public keys are accepted in a JWKS")
        }
        _ => anyhow::bail!("a key of an unsupported type"),
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(declared) => {
            let declared = Algorithm::try_from(declared)
                .map_err(|_| anyhow::anyhow!("an unsupported algorithm"))?;
            anyhow::ensure!(
                family.contains(&declared),
                "algorithm {declared:?} does not fit the key's type"
            );
            vec![declared]
        }
        None => family,
    };
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk)?,
    })
}

/// Labels of a key fetch count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// The issuer's URL.
    pub issuer: String,
    /// `success` or `failure`.
    pub outcome: String,
}

/// Labels of an issuer's gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    /// The issuer's URL.
    pub issuer: String,
}

/// What key fetches feed: their count by outcome, and when each issuer's
/// keys were last fetched.
#[derive(Clone, Default)]
pub struct Instruments {
    pub fetches: Family<FetchLabels, Counter>,
    pub fetched_at: Family<IssuerLabel, Gauge>,
}

/// The part of a discovery document read.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The keys fetched last.
struct Fetched {
    keys: Arc<KeySet>,
    at: Instant,
}

/// Keys found through discovery.
pub struct Remote {
    issuer: String,
    client: reqwest::Client,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    grace: Duration,
    fetched: RwLock<Option<Fetched>>,
    /// When a fetch last started, successful or not.
    attempted: Mutex<Option<Instant>>,
    /// One fetch at a time; the others wait for its keys.
    fetching: tokio::sync::Mutex<()>,
    /// Whether the last fetch failed.
    failing: std::sync::atomic::AtomicBool,
    instruments: Instruments,
}

/// How an issuer's keys are found.
pub struct RemoteSettings<'a> {
    pub issuer: &'a str,
    pub ca_pem: Option<Vec<u8>>,
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub grace: Duration,
    pub instruments: Instruments,
}

/// Whether `url` may be fetched: https, or http on a loopback address.
pub fn check_url(what: &str, url: &str) -> anyhow::Result<reqwest::Url> {
    let parsed =
        reqwest::Url::parse(url).map_err(|error| anyhow::anyhow!("{what} {url:?}: {error}"))?;
    let loopback = parsed.host_str().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    });
    anyhow::ensure!(
        parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback),
        "{what} {url:?} is not https (plain http is accepted on a loopback address only)"
    );
    Ok(parsed)
}

impl Remote {
    pub fn new(settings: RemoteSettings<'_>) -> anyhow::Result<Self> {
        check_url("issuer", settings.issuer)?;
        anyhow::ensure!(
            settings.grace >= settings.refresh_interval,
            "issuer {:?}: keys_grace_period must be at least refresh_interval",
            settings.issuer
        );
        let mut client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = settings.ca_pem {
            client = client.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
                client = client.add_root_certificate(certificate);
            }
        }
        let label = IssuerLabel {
            issuer: settings.issuer.to_owned(),
        };
        settings.instruments.fetched_at.get_or_create_owned(&label);
        for outcome in ["success", "failure"] {
            settings
                .instruments
                .fetches
                .get_or_create_owned(&FetchLabels {
                    issuer: settings.issuer.to_owned(),
                    outcome: outcome.to_owned(),
                });
        }
        Ok(Remote {
            issuer: settings.issuer.to_owned(),
            client: client.build()?,
            refresh_interval: settings.refresh_interval,
            min_refresh_interval: settings.min_refresh_interval,
            grace: settings.grace,
            fetched: RwLock::new(None),
            attempted: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            failing: std::sync::atomic::AtomicBool::new(false),
            instruments: settings.instruments,
        })
    }

    /// The keys in force: fetched within the grace period.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        let fetched = self.fetched.read().unwrap_or_else(|p| p.into_inner());
        fetched
            .as_ref()
            .filter(|fetched| fetched.at.elapsed() <= self.grace)
            .map(|fetched| fetched.keys.clone())
    }

    /// Whether the last fetch failed.
    pub fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The keys for a token whose `kid` the keys in force do not hold:
    /// fetched again unless a fetch started within the minimum interval.
    pub async fn for_unknown(&self, kid: Option<&str>) -> Option<Arc<KeySet>> {
        let _one = self.fetching.lock().await;
        // A fetch that finished while this one waited may know it now.
        if let (Some(keys), Some(kid)) = (self.current(), kid)
            && keys.knows(kid)
        {
            return Some(keys);
        }
        if self.attempted_within(self.min_refresh_interval) {
            return self.current();
        }
        self.fetch_now().await;
        self.current()
    }

    fn attempted_within(&self, interval: Duration) -> bool {
        let attempted = self.attempted.lock().unwrap_or_else(|p| p.into_inner());
        attempted.is_some_and(|at| at.elapsed() < interval)
    }

    /// Fetches the keys on schedule: every refresh interval, and every
    /// minimum interval while fetching fails.
    pub async fn refresh_forever(self: Arc<Self>) {
        loop {
            let pause = {
                let _one = self.fetching.lock().await;
                if !self.attempted_within(self.min_refresh_interval) {
                    self.fetch_now().await;
                }
                if self.failing() {
                    self.min_refresh_interval
                } else {
                    self.refresh_interval
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    async fn fetch_now(&self) {
        *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let outcome = match self.fetch().await {
            Ok(keys) => {
                *self.fetched.write().unwrap_or_else(|p| p.into_inner()) = Some(Fetched {
                    keys: Arc::new(keys),
                    at: Instant::now(),
                });
                self.failing
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.instruments
                    .fetched_at
                    .get_or_create(&IssuerLabel {
                        issuer: self.issuer.clone(),
                    })
                    .set(now.as_secs() as i64);
                "success"
            }
            Err(error) => {
                self.failing
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let serving = self.current().is_some();
                tracing::warn!(issuer = %self.issuer, error = %format!("{error:#}"), serving_last_keys = serving,
                    "cannot fetch the issuer's keys");
                "failure"
            }
        };
        self.instruments
            .fetches
            .get_or_create(&FetchLabels {
                issuer: self.issuer.clone(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    async fn fetch(&self) -> anyhow::Result<KeySet> {
        let address = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = serde_json::from_slice(&self.get(&address).await?)
            .map_err(|error| anyhow::anyhow!("the discovery document: {error}"))?;
        anyhow::ensure!(
            discovery.issuer == self.issuer,
            "the discovery document names issuer {:?}",
            discovery.issuer
        );
        let jwks_uri = check_url("jwks_uri", &discovery.jwks_uri)?;
        let jwks: JwkSet = serde_json::from_slice(&self.get(jwks_uri.as_str()).await?)
            .map_err(|error| anyhow::anyhow!("the JWKS: {error}"))?;
        KeySet::from_jwks(&jwks)
    }

    /// A bounded GET.
    async fn get(&self, address: &str) -> anyhow::Result<Vec<u8>> {
        let mut response = self
            .client
            .get(address)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|error| anyhow::anyhow!("GET {address}: {error}"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "GET {address}: {}",
            response.status()
        );
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| anyhow::anyhow!("GET {address}: {error}"))?
        {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_DOCUMENT_BYTES,
                "GET {address}: larger than {MAX_DOCUMENT_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
