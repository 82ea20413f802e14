//! Bearer-token verification: a JWT from the `authorization` header,
//! checked with the keys and audiences of the one trusted issuer its `iss`
//! names, becomes a [`Caller`] whose grants its claims and the role
//! bindings give.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use hashlink::LruCache;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::bindings::{Bindings, Signed};
use super::keys::{ASYMMETRIC, Instruments, KeySet, Remote, RemoteSettings};
use super::{Caller, Grant, HeldGrant};
use crate::config::{AuthSettings, IssuerSettings};
use crate::domain::{Error, Result};

/// What is wrong with a token, in words a caller can act on rather than the
/// JWT library's (such as "Base64 error: Invalid last symbol 116").
fn token_problem(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => {
            "it is not a JWT (three base64url parts: header, claims, signature)".into()
        }
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::ExpiredSignature => "it has expired (exp)".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not one this server trusts".into(),
        ErrorKind::InvalidAudience => "its audience (aud) is not this server".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim:?} claim"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => "its algorithm is not accepted".into(),
        _ => "it cannot be verified".into(),
    }
}

/// A refused token: what the caller is told, and the precise reason the
/// server logs (never the token).
struct Refusal {
    told: String,
    reason: String,
}

impl Refusal {
    fn plain(told: impl Into<String>) -> Self {
        let told = told.into();
        Refusal {
            reason: told.clone(),
            told,
        }
    }

    fn because(told: impl Into<String>, reason: impl Into<String>) -> Self {
        Refusal {
            told: told.into(),
            reason: reason.into(),
        }
    }
}

/// Tokens remembered as verified.
const VERIFIED_TOKENS: usize = 10_000;

/// Tokens already verified, by their SHA-256, with the caller each proves
/// (its bindings resolved) and its `exp`: a runtime or client sending the
/// same token on every call has it verified once. Only verified tokens
/// enter, so a caller without one cannot grow it; the least recently used
/// goes when it is full, and all go when the bindings change.
type Verified = Mutex<LruCache<[u8; 32], (Caller, u64)>>;

/// How one issuer's tokens are checked.
struct Issuer {
    /// Its `iss`.
    name: String,
    /// The checks of a token, one set per accepted algorithm (each
    /// accepting only its own), made once rather than per request.
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    /// A claim of `"<namespace>:<role>"` grants.
    roles_claim: Option<String>,
    /// The claims bindings may match, besides `sub`.
    claims: Vec<String>,
    /// What the console and `policyhub login` sign in with.
    sign_in: Option<SignIn>,
}

/// Where an issuer's keys come from.
enum Keys {
    /// A shared secret; only HS256 is accepted.
    Secret(DecodingKey),
    /// Public keys from a file.
    Fixed(KeySet),
    /// Public keys found through discovery.
    Remote(Arc<Remote>),
}

/// An issuer people sign in with: its public client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
}

/// How tokens are verified.
#[derive(Clone)]
pub struct Authenticator {
    issuers: Arc<[Issuer]>,
    /// Read by every call without a lock, replaced whole by a reload, as
    /// the hub's signing keys are.
    bindings: Arc<ArcSwap<Bindings>>,
    verified: Arc<Verified>,
}

/// The part of an unverified token read to choose its issuer.
#[derive(serde::Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl Authenticator {
    /// The issuers of `settings`: the local one (when `local_secret` is
    /// given or `jwks_file` set) and every `[[auth.issuers]]` entry.
    pub fn new(
        settings: &AuthSettings,
        local_secret: Option<&[u8]>,
        instruments: &Instruments,
    ) -> anyhow::Result<Self> {
        let mut issuers = Vec::new();
        let local_keys = match (&settings.jwks_file, local_secret) {
            (Some(path), _) => Some(Keys::Fixed(read_jwks(path)?)),
            (None, Some(secret)) => Some(Keys::Secret(DecodingKey::from_secret(secret))),
            (None, None) => None,
        };
        if let Some(keys) = local_keys {
            issuers.push(Issuer::new(
                &settings.issuer,
                std::slice::from_ref(&settings.audience),
                keys,
                Some(settings.roles_claim.clone()),
                Vec::new(),
                None,
                settings.leeway,
            ));
        }
        for entry in &settings.issuers {
            anyhow::ensure!(
                issuers
                    .iter()
                    .all(|issuer: &Issuer| issuer.name != entry.issuer),
                "issuer {:?} is configured twice",
                entry.issuer
            );
            issuers.push(Issuer::from_settings(entry, settings.leeway, instruments)?);
        }
        anyhow::ensure!(!issuers.is_empty(), "no token issuer is configured");
        Ok(Authenticator {
            issuers: issuers.into(),
            bindings: Arc::default(),
            verified: Arc::new(Mutex::new(LruCache::new(VERIFIED_TOKENS))),
        })
    }

    /// Each issuer and the claims bindings may match in its tokens.
    pub fn signed_claims(&self) -> Vec<Signed<'_>> {
        self.issuers
            .iter()
            .map(|issuer| Signed {
                issuer: &issuer.name,
                claims: &issuer.claims,
            })
            .collect()
    }

    /// Puts `bindings` in force; tokens verified before are verified again.
    pub fn set_bindings(&self, bindings: Bindings) {
        self.bindings.store(Arc::new(bindings));
        self.verified().clear();
    }

    /// The bindings in force, without touching their reference count:
    /// every verified token reads them.
    fn current_bindings(&self) -> arc_swap::Guard<Arc<Bindings>> {
        self.bindings.load()
    }

    /// The issuers whose keys are fetched, to keep fresh.
    pub fn remotes(&self) -> Vec<Arc<Remote>> {
        self.issuers
            .iter()
            .filter_map(|issuer| match &issuer.keys {
                Keys::Remote(remote) => Some(remote.clone()),
                _ => None,
            })
            .collect()
    }

    /// The issuers people sign in with.
    pub fn sign_in(&self) -> Vec<SignIn> {
        self.issuers
            .iter()
            .filter_map(|issuer| issuer.sign_in.clone())
            .collect()
    }

    /// The caller a bearer token proves, or why it proves none.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((caller, expires)) = self.verified().get(&fingerprint)
            && now < *expires
        {
            return Ok(caller.clone());
        }
        self.verify(token, fingerprint).await.map_err(|refusal| {
            tracing::warn!(reason = %refusal.reason, "token refused");
            Error::Unauthenticated(format!("invalid token: {}", refusal.told))
        })
    }

    /// The cache of verified tokens.
    fn verified(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], (Caller, u64)>> {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Verifies `token` in full and remembers it, by its `fingerprint`,
    /// until its `exp`.
    async fn verify(&self, token: &str, fingerprint: [u8; 32]) -> Result<Caller, Refusal> {
        let not_jwt = |error: jsonwebtoken::errors::Error| Refusal::plain(token_problem(&error));
        let header = jsonwebtoken::decode_header(token).map_err(not_jwt)?;
        let named = jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(token)
            .map_err(not_jwt)?
            .iss
            .ok_or_else(|| Refusal::plain("it has no \"iss\" claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|issuer| issuer.name == named)
            .ok_or_else(|| {
                Refusal::because(
                    "its issuer (iss) is not one this server trusts",
                    format!(
                        "untrusted issuer {:?}",
                        named.chars().take(200).collect::<String>()
                    ),
                )
            })?;
        let (_, validation) = issuer
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or_else(|| {
                Refusal::because(
                    format!("algorithm {:?} is not accepted", header.alg),
                    format!(
                        "algorithm {:?} is not accepted for issuer {named:?}",
                        header.alg
                    ),
                )
            })?;
        let claims = issuer
            .decode(token, header.kid.as_deref(), header.alg, validation)
            .await?;
        let caller = self.caller(issuer, &claims)?;
        if let Some(expires) = claims.get("exp").and_then(Value::as_u64) {
            self.verified()
                .insert(fingerprint, (caller.clone(), expires));
        }
        Ok(caller)
    }

    /// The caller of a verified token: its subject, and the grants of its
    /// roles claim and of the bindings it matches.
    fn caller(&self, issuer: &Issuer, claims: &Map<String, Value>) -> Result<Caller, Refusal> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty() && subject.len() <= 256)
            .ok_or_else(|| Refusal::plain("\"sub\" must be a non-empty string"))?;
        let mut grants = Vec::new();
        if let Some(claim) = &issuer.roles_claim {
            let by = format!("claim {claim:?}");
            for grant in roles(claim, claims.get(claim))? {
                grants.push(HeldGrant {
                    grant,
                    by: by.clone(),
                });
            }
        }
        let bindings = self.current_bindings();
        let matched = bindings
            .matching_token(&issuer.name, claims)
            .map_err(|reason| {
                Refusal::because(
                    "a claim is malformed",
                    format!("issuer {:?}: {reason}", issuer.name),
                )
            })?;
        for binding in matched {
            for grant in &binding.grants {
                grants.push(HeldGrant {
                    grant: grant.clone(),
                    by: format!("binding {:?}", binding.name),
                });
            }
        }
        Ok(Caller {
            subject: subject.to_owned(),
            issuer: issuer.name.clone(),
            grants,
        })
    }

    /// The caller a client certificate's SPIFFE ID proves: the grants of
    /// the bindings that match it.
    pub fn spiffe_caller(&self, id: &str) -> Caller {
        let bindings = self.current_bindings();
        let grants = bindings
            .matching_spiffe_id(id)
            .into_iter()
            .flat_map(|binding| {
                binding.grants.iter().map(|grant| HeldGrant {
                    grant: grant.clone(),
                    by: format!("binding {:?}", binding.name),
                })
            })
            .collect();
        Caller {
            subject: id.to_owned(),
            issuer: "client certificate".into(),
            grants,
        }
    }
}

/// The grants a roles claim lists.
fn roles(claim: &str, value: Option<&Value>) -> Result<Vec<Grant>, Refusal> {
    let wrong_type = || {
        Refusal::plain(format!(
            "claim {claim:?} must be an array of \"<namespace>:<role>\" strings"
        ))
    };
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or_else(wrong_type)?;
    if items.len() > super::bindings::MAX_CLAIM_VALUES {
        return Err(wrong_type());
    }
    items
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(wrong_type)?;
            text.parse().map_err(Refusal::plain)
        })
        .collect()
}

fn read_jwks(path: &std::path::Path) -> anyhow::Result<KeySet> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
    let jwks: JwkSet = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("{} is not a JWKS: {error}", path.display()))?;
    KeySet::from_jwks(&jwks).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

impl Issuer {
    fn from_settings(
        entry: &IssuerSettings,
        leeway: std::time::Duration,
        instruments: &Instruments,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !entry.issuer.is_empty(),
            "an [[auth.issuers]] entry has no issuer"
        );
        let named = |error: anyhow::Error| anyhow::anyhow!("issuer {:?}: {error:#}", entry.issuer);
        anyhow::ensure!(
            !entry.audiences.is_empty(),
            "issuer {:?}: list the audiences its tokens must carry",
            entry.issuer
        );
        let keys = match &entry.jwks_file {
            Some(path) => Keys::Fixed(read_jwks(path).map_err(named)?),
            None => {
                let ca_pem = match &entry.ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|error| {
                        anyhow::anyhow!(
                            "issuer {:?}: reading {}: {error}",
                            entry.issuer,
                            path.display()
                        )
                    })?),
                    None => None,
                };
                Keys::Remote(Arc::new(
                    Remote::new(RemoteSettings {
                        issuer: &entry.issuer,
                        ca_pem,
                        refresh_interval: entry.refresh_interval,
                        min_refresh_interval: entry.min_refresh_interval,
                        grace: entry.keys_grace_period,
                        instruments: instruments.clone(),
                    })
                    .map_err(named)?,
                ))
            }
        };
        let sign_in = entry.client_id.as_ref().map(|client_id| SignIn {
            issuer: entry.issuer.clone(),
            client_id: client_id.clone(),
            scopes: entry.scopes.clone(),
        });
        Ok(Issuer::new(
            &entry.issuer,
            &entry.audiences,
            keys,
            entry.roles_claim.clone(),
            entry.claims.clone(),
            sign_in,
            leeway,
        ))
    }

    fn new(
        name: &str,
        audiences: &[String],
        keys: Keys,
        roles_claim: Option<String>,
        claims: Vec<String>,
        sign_in: Option<SignIn>,
        leeway: std::time::Duration,
    ) -> Self {
        let algorithms: &[Algorithm] = match keys {
            Keys::Secret(_) => &[Algorithm::HS256],
            Keys::Fixed(_) | Keys::Remote(_) => &ASYMMETRIC,
        };
        let validations = algorithms
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(algorithm);
                validation.set_issuer(&[name]);
                validation.set_audience(audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.validate_nbf = true;
                validation.leeway = leeway.as_secs();
                (algorithm, validation)
            })
            .collect();
        Issuer {
            name: name.to_owned(),
            validations,
            keys,
            roles_claim,
            claims,
            sign_in,
        }
    }

    /// The claims of `token`, verified with this issuer's key for `kid`
    /// and `algorithm`.
    async fn decode(
        &self,
        token: &str,
        kid: Option<&str>,
        algorithm: Algorithm,
        validation: &Validation,
    ) -> Result<Map<String, Value>, Refusal> {
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
                .map(|data| data.claims)
                .map_err(|error| {
                    Refusal::because(
                        token_problem(&error),
                        format!("issuer {:?}: {}", self.name, token_problem(&error)),
                    )
                })
        };
        let unknown = || {
            Refusal::because(
                "it is not signed by a key of its issuer",
                format!(
                    "issuer {:?} has no {algorithm:?} key {kid:?} (after fetching its keys at most once per min_refresh_interval)",
                    self.name
                ),
            )
        };
        match &self.keys {
            Keys::Secret(key) => decode(key),
            Keys::Fixed(keys) => decode(keys.find(kid, algorithm).ok_or_else(unknown)?),
            Keys::Remote(remote) => {
                if let Some(keys) = remote.current()
                    && let Some(key) = keys.find(kid, algorithm)
                {
                    return decode(key);
                }
                let keys = remote.for_unknown(kid).await.ok_or_else(unknown)?;
                decode(keys.find(kid, algorithm).ok_or_else(unknown)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"a shared secret of at least thirty-two bytes";

    fn authenticator() -> Authenticator {
        let settings = AuthSettings {
            issuer: "issuer".into(),
            leeway: std::time::Duration::ZERO,
            ..AuthSettings::default()
        };
        Authenticator::new(&settings, Some(SECRET), &Instruments::default()).unwrap()
    }

    fn token(subject: &str, exp: u64) -> String {
        let claims = json!({"iss": "issuer", "aud": "policyhub", "sub": subject, "exp": exp,
            "roles": ["payments:reader"]});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_until_it_expires_and_no_other_is() {
        let authenticator = authenticator();
        let now = jsonwebtoken::get_current_timestamp();
        let alice = token("alice", now + 600);
        let first = authenticator.authenticate(&alice).await.unwrap();
        assert_eq!(authenticator.verified().len(), 1);
        assert_eq!(authenticator.authenticate(&alice).await.unwrap(), first);
        assert_eq!(authenticator.verified().len(), 1, "verified once");
        assert_eq!(first.grants[0].by, "claim \"roles\"");

        // Remembered only until its exp: then it is verified again, and
        // refused.
        let soon = token("bob", now + 1);
        authenticator.authenticate(&soon).await.unwrap();
        assert_eq!(authenticator.verified().len(), 2);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let error = authenticator.authenticate(&soon).await.unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");

        // A token that does not verify is not remembered.
        let forged = token("mallory", now + 600);
        let tampered = format!("{}x", forged.trim_end_matches(char::is_alphanumeric));
        assert!(authenticator.authenticate(&tampered).await.is_err());
        assert_eq!(authenticator.verified().len(), 2);

        // New bindings: every token is verified again.
        authenticator.set_bindings(Bindings::default());
        assert_eq!(authenticator.verified().len(), 0);
    }
}
