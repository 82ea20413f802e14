//! Bearer-token verification: a JWT from the `authorization` metadata,
//! checked against the issuer's keys, becomes a [`Caller`].

use std::sync::{Arc, Mutex};

use hashlink::LruCache;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use super::{Caller, Grant};
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
        ErrorKind::InvalidIssuer => "its issuer (iss) is not the one this server trusts".into(),
        ErrorKind::InvalidAudience => "its audience (aud) is not this server".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim:?} claim"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => "its algorithm is not accepted".into(),
        _ => "it cannot be verified".into(),
    }
}

/// Tokens remembered as verified.
const VERIFIED_TOKENS: usize = 10_000;

/// Tokens already verified, by their SHA-256, with the caller each proves
/// and its `exp`: a runtime or client sending the same token on every call
/// has it verified once. Only verified tokens enter, so a caller without one
/// cannot grow it; the least recently used goes when it is full.
type Verified = Mutex<LruCache<[u8; 32], (Caller, u64)>>;

/// How tokens are verified.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<IssuerKeys>,
    /// The checks of a token, one set per accepted algorithm (each accepting
    /// only its own), made once rather than per request.
    validations: Arc<[(Algorithm, Validation)]>,
    roles_claim: String,
    verified: Arc<Verified>,
}

enum IssuerKeys {
    /// Public keys of an issuer; HMAC algorithms are never accepted here.
    Jwks(Vec<(Option<String>, Algorithm, DecodingKey)>),
    /// A shared secret; only HS256 is accepted.
    Hs256(DecodingKey),
}

/// Algorithms accepted with a JWKS: asymmetric only, so a token signed with
/// HMAC over a public key (algorithm confusion) never verifies.
const ASYMMETRIC: [Algorithm; 9] = [
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

impl Authenticator {
    /// Verifies tokens against an issuer's JWKS.
    pub fn with_jwks(
        jwks: &JwkSet,
        issuer: &str,
        audience: &str,
        leeway: std::time::Duration,
        roles_claim: &str,
    ) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for jwk in &jwks.keys {
            let key = DecodingKey::from_jwk(jwk)?;
            let algorithm = match jwk.common.key_algorithm {
                Some(algorithm) => Algorithm::try_from(algorithm)?,
                None => match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => {
                        anyhow::bail!(
                            "the issuer JWKS holds a symmetric key: use auth.hs256_secret_file for shared secrets"
                        )
                    }
                    _ => anyhow::bail!("the issuer JWKS holds a key of an unsupported type"),
                },
            };
            anyhow::ensure!(
                ASYMMETRIC.contains(&algorithm),
                "the issuer JWKS holds a {algorithm:?} key: only asymmetric algorithms are accepted there"
            );
            keys.push((jwk.common.key_id.clone(), algorithm, key));
        }
        anyhow::ensure!(!keys.is_empty(), "the issuer JWKS holds no key");
        let mut validation = Validation::new(keys[0].1);
        validation.algorithms = keys.iter().map(|(_, algorithm, _)| *algorithm).collect();
        Ok(Self::finish(
            IssuerKeys::Jwks(keys),
            validation,
            issuer,
            audience,
            leeway,
            roles_claim,
        ))
    }

    /// Verifies HS256 tokens made with a shared secret.
    pub fn with_hs256(
        secret: &[u8],
        issuer: &str,
        audience: &str,
        leeway: std::time::Duration,
        roles_claim: &str,
    ) -> Self {
        let validation = Validation::new(Algorithm::HS256);
        Self::finish(
            IssuerKeys::Hs256(DecodingKey::from_secret(secret)),
            validation,
            issuer,
            audience,
            leeway,
            roles_claim,
        )
    }

    fn finish(
        keys: IssuerKeys,
        mut validation: Validation,
        issuer: &str,
        audience: &str,
        leeway: std::time::Duration,
        roles_claim: &str,
    ) -> Self {
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        let validations = validation
            .algorithms
            .iter()
            .map(|&algorithm| {
                let mut only = validation.clone();
                only.algorithms = vec![algorithm];
                (algorithm, only)
            })
            .collect();
        Authenticator {
            keys: Arc::new(keys),
            validations,
            roles_claim: roles_claim.to_owned(),
            verified: Arc::new(Mutex::new(LruCache::new(VERIFIED_TOKENS))),
        }
    }

    /// The caller a request's bearer token proves, or why it proves none.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller> {
        let header = metadata.get("authorization").ok_or_else(|| {
            Error::Unauthenticated("no credentials: send \"authorization: Bearer <token>\"".into())
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "the authorization metadata is not \"Bearer <token>\"".into(),
                )
            })?;
        let fingerprint: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        if let Some((caller, expires)) = self.verified().get(&fingerprint)
            && now < *expires
        {
            return Ok(caller.clone());
        }
        self.verify(token, fingerprint)
    }

    /// The cache of verified tokens.
    fn verified(&self) -> std::sync::MutexGuard<'_, LruCache<[u8; 32], (Caller, u64)>> {
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Verifies `token` in full and remembers it, by its `fingerprint`,
    /// until its `exp`.
    fn verify(&self, token: &str, fingerprint: [u8; 32]) -> Result<Caller> {
        let refused = |error: jsonwebtoken::errors::Error| {
            Error::Unauthenticated(format!("invalid token: {}", token_problem(&error)))
        };
        let header = jsonwebtoken::decode_header(token).map_err(refused)?;
        let (_, validation) = self
            .validations
            .iter()
            .find(|(algorithm, _)| *algorithm == header.alg)
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "invalid token: algorithm {:?} is not accepted",
                    header.alg
                ))
            })?;
        let key = match self.keys.as_ref() {
            IssuerKeys::Hs256(key) => key,
            IssuerKeys::Jwks(keys) => keys
                .iter()
                .find(|(kid, algorithm, _)| {
                    *algorithm == header.alg
                        && (header.kid.is_none() || kid.as_deref() == header.kid.as_deref())
                })
                .map(|(_, _, key)| key)
                .ok_or_else(|| {
                    Error::Unauthenticated(format!("invalid token: unknown key {:?}", header.kid))
                })?,
        };
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, validation)
            .map_err(refused)?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|subject| !subject.is_empty() && subject.len() <= 256)
            .ok_or_else(|| {
                Error::Unauthenticated("invalid token: \"sub\" must be a non-empty string".into())
            })?;
        let grants = self.grants(claims.get(&self.roles_claim))?;
        let caller = Caller {
            subject: subject.to_owned(),
            grants,
        };
        if let Some(expires) = claims.get("exp").and_then(Value::as_u64) {
            self.verified()
                .insert(fingerprint, (caller.clone(), expires));
        }
        Ok(caller)
    }

    fn grants(&self, claim: Option<&Value>) -> Result<Vec<Grant>> {
        let wrong_type = || {
            Error::Unauthenticated(format!(
                "invalid token: claim {:?} must be an array of \"<namespace>:<role>\" strings",
                self.roles_claim
            ))
        };
        let Some(claim) = claim else {
            return Ok(Vec::new());
        };
        let items = claim.as_array().ok_or_else(wrong_type)?;
        items
            .iter()
            .map(|item| {
                let text = item.as_str().ok_or_else(wrong_type)?;
                text.parse().map_err(|error: String| {
                    Error::Unauthenticated(format!("invalid token: {error}"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"a shared secret of at least thirty-two bytes";

    fn authenticator() -> Authenticator {
        let leeway = std::time::Duration::ZERO;
        Authenticator::with_hs256(SECRET, "issuer", "policyhub", leeway, "roles")
    }

    fn metadata(subject: &str, exp: u64) -> MetadataMap {
        let claims = json!({"iss": "issuer", "aud": "policyhub", "sub": subject, "exp": exp,
            "roles": ["payments:reader"]});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_and_no_other_is() {
        let authenticator = authenticator();
        let now = jsonwebtoken::get_current_timestamp();
        let alice = metadata("alice", now + 600);
        let first = authenticator.authenticate(&alice).unwrap();
        assert_eq!(authenticator.verified().len(), 1);
        assert_eq!(authenticator.authenticate(&alice).unwrap(), first);
        assert_eq!(authenticator.verified().len(), 1, "verified once");

        // Remembered only until its exp: then it is verified again, and
        // refused.
        let soon = metadata("bob", now + 1);
        authenticator.authenticate(&soon).unwrap();
        assert_eq!(authenticator.verified().len(), 2);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let error = authenticator.authenticate(&soon).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");

        // A token that does not verify is not remembered.
        let mut forged = metadata("mallory", now + 600);
        let value = forged
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let tampered = format!("{}x", value.trim_end_matches(char::is_alphanumeric));
        forged.insert("authorization", tampered.parse().unwrap());
        assert!(authenticator.authenticate(&forged).is_err());
        assert_eq!(authenticator.verified().len(), 2);
    }
}
