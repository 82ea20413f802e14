//! Bearer-token verification: a JWT from the `authorization` metadata,
//! checked against the issuer's keys, becomes a [`Caller`].

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;
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

/// How tokens are verified.
#[derive(Clone)]
pub struct Authenticator {
    keys: Arc<IssuerKeys>,
    /// The checks of a token, one set per accepted algorithm (each accepting
    /// only its own), made once rather than per request.
    validations: Arc<[(Algorithm, Validation)]>,
    roles_claim: String,
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
        Ok(Caller {
            subject: subject.to_owned(),
            grants,
        })
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
