//! The signed bundle format, shared by the server that signs and every
//! runtime that verifies.
//!
//! A bundle is a JWS compact serialization (RFC 7515) whose payload carries
//! the whole policy, so it verifies offline with nothing but the JWKS:
//!
//! ```text
//! header  {"alg":"EdDSA","kid":"<RFC 7638 thumbprint>","typ":"policyhub-bundle+jwt"}
//! payload {"iss","sub":"namespace/name","ver","label","digest","body","iat"}
//! ```
//!
//! The explicit `typ` (RFC 8725 §3.11) keeps a bundle from ever being
//! accepted where an access token is expected, and the other way round.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The JWS `typ` header of every bundle.
pub const BUNDLE_TYPE: &str = "policyhub-bundle+jwt";

/// The claims of a signed bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleClaims {
    /// Issuer: the deployment's configured name.
    pub iss: String,
    /// `namespace/name` of the policy.
    pub sub: String,
    /// Version number.
    pub ver: u32,
    /// Release label, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Digest of the body's canonical JSON.
    pub digest: String,
    /// The policy document.
    pub body: Value,
    /// Publish time, seconds since the epoch.
    pub iat: i64,
    /// Other policies of the namespace this version needs active beside
    /// it; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<Requirement>,
}

/// A policy of the same namespace that must be active, at a release whose
/// label is in `range` (a semver range such as `>=1.5.0, <2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The required policy's name.
    pub name: String,
    /// The releases that satisfy it.
    pub range: String,
}

/// A public key as an RFC 7517 JSON Web Key (`kty: OKP`, `crv: Ed25519`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type, `OKP`.
    pub kty: String,
    /// Curve, `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    /// RFC 7638 thumbprint.
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The JWK of a raw Ed25519 public key.
    pub fn ed25519(public_key: &[u8]) -> Self {
        Jwk::from_x(URL_SAFE_NO_PAD.encode(public_key))
    }

    /// The JWK of an Ed25519 public key given as base64url (its `x`); its
    /// id is the RFC 7638 thumbprint.
    pub fn from_x(x: String) -> Self {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: thumbprint(&x),
            x,
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }
}

/// A JWK Set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The key set of a `GetSigningKeys` answer.
    pub(crate) fn from_response(response: crate::proto::GetSigningKeysResponse) -> Self {
        Jwks {
            keys: response
                .keys
                .into_iter()
                .map(|key| Jwk {
                    kty: key.kty,
                    crv: key.crv,
                    x: key.x,
                    kid: key.kid,
                    alg: key.alg,
                    use_: key.r#use,
                })
                .collect(),
        }
    }

    /// Whether a key with this id is in the set.
    pub fn knows(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid == kid)
    }
}

/// RFC 8785 canonical JSON of any JSON value: the bytes a digest covers.
pub fn canonical_json(value: &Value) -> String {
    serde_json_canonicalizer::to_string(value)
        .expect("a serde_json::Value always serializes: its keys are strings")
}

/// `sha256:` + lowercase hex of the SHA-256 of canonical JSON bytes.
pub fn digest_of_canonical(canonical: &[u8]) -> String {
    let hash = Sha256::digest(canonical);
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// RFC 7638 thumbprint of an Ed25519 key: the SHA-256 of the required
/// members in lexicographic order, base64url.
pub fn thumbprint(x: &str) -> String {
    let required = serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": x});
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical_json(&required).as_bytes()))
}

/// Why a bundle did not verify.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The text is not a JWS with a readable header.
    #[error("not a signed bundle: {0}")]
    Malformed(String),
    /// The header names no key or a key the JWKS does not hold.
    #[error("signed by unknown key {0:?}")]
    UnknownKey(String),
    /// Signature, algorithm or type check failed.
    #[error("signature check failed: {0}")]
    BadSignature(String),
    /// The signature holds but the digest claim does not match the body.
    #[error("digest {claimed} does not match the body, whose digest is {actual}")]
    DigestMismatch {
        /// The digest in the claims.
        claimed: String,
        /// The digest of the body in the claims.
        actual: String,
    },
}

/// The key id a bundle's header names, without verifying anything.
pub fn key_id(jws: &str) -> Result<String, VerifyError> {
    let header = jsonwebtoken::decode_header(jws)
        .map_err(|error| VerifyError::Malformed(error.to_string()))?;
    header
        .kid
        .ok_or_else(|| VerifyError::UnknownKey(String::new()))
}

/// Verifies a bundle offline against a JWKS: header type, algorithm, key,
/// signature, and that the digest claim matches the body.
pub fn verify(jws: &str, jwks: &Jwks) -> Result<BundleClaims, VerifyError> {
    let claims: BundleClaims = verify_signature(jws, BUNDLE_TYPE, jwks)?;
    if !claims.body.is_object() {
        return Err(VerifyError::Malformed(
            "the body is not a JSON object".into(),
        ));
    }
    let actual = digest_of_canonical(canonical_json(&claims.body).as_bytes());
    if actual != claims.digest {
        return Err(VerifyError::DigestMismatch {
            claimed: claims.digest,
            actual,
        });
    }
    Ok(claims)
}

/// Checks a JWS of this format offline: its `typ` header is `typ`, its
/// algorithm EdDSA, its key one of `jwks`, its signature good; its claims.
pub(crate) fn verify_signature<T: serde::de::DeserializeOwned>(
    jws: &str,
    typ: &str,
    jwks: &Jwks,
) -> Result<T, VerifyError> {
    let header = jsonwebtoken::decode_header(jws)
        .map_err(|error| VerifyError::Malformed(error.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(VerifyError::BadSignature(format!(
            "algorithm {:?} is not EdDSA",
            header.alg
        )));
    }
    if header.typ.as_deref() != Some(typ) {
        return Err(VerifyError::BadSignature(format!(
            "type {:?} is not {typ}",
            header.typ
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| VerifyError::UnknownKey(String::new()))?;
    let jwk = jwks
        .keys
        .iter()
        .find(|jwk| jwk.kid == kid && jwk.kty == "OKP" && jwk.crv == "Ed25519")
        .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_ed_components(&jwk.x)
        .map_err(|error| VerifyError::BadSignature(error.to_string()))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Bundles and checkpoints state facts: no expiry, no audience.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    Ok(jsonwebtoken::decode::<T>(jws, &key, &validation)
        .map_err(|error| VerifyError::BadSignature(error.to_string()))?
        .claims)
}

/// What the envelope around a signed bundle says it holds.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Namespace asked for.
    pub namespace: &'a str,
    /// Policy name the envelope carries.
    pub name: &'a str,
    /// Version the envelope carries.
    pub version: u32,
    /// Digest the envelope carries.
    pub digest: &'a str,
}

/// Verifies a bundle, and that its signed payload is the policy, version
/// and body its envelope names: a valid bundle of another policy, or an old
/// version replayed under a new envelope, is refused.
pub fn verify_envelope(
    jws: &str,
    envelope: &Envelope<'_>,
    jwks: &Jwks,
) -> Result<BundleClaims, String> {
    let claims = verify(jws, jwks).map_err(|error| error.to_string())?;
    let expected = format!("{}/{}", envelope.namespace, envelope.name);
    if claims.sub != expected {
        return Err(format!(
            "the bundle for {expected} is signed for {}",
            claims.sub
        ));
    }
    if claims.ver != envelope.version || claims.digest != envelope.digest {
        return Err(format!(
            "the envelope says version {} {}, the signed payload version {} {}",
            envelope.version, envelope.digest, claims.ver, claims.digest
        ));
    }
    Ok(claims)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A vector of `conformance/vectors/`, which the server writes.
    pub(crate) fn vectors(name: &str) -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conformance/vectors/");
        serde_json::from_str(&std::fs::read_to_string(format!("{path}{name}")).unwrap()).unwrap()
    }

    #[test]
    fn every_bundle_of_the_shared_vectors_is_taken_or_refused_as_they_say() {
        let vectors = vectors("bundles.json");
        let jwks: Jwks = serde_json::from_value(vectors["jwks"].clone()).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            let envelope = &case["envelope"];
            let envelope = Envelope {
                namespace: envelope["namespace"].as_str().unwrap(),
                name: envelope["name"].as_str().unwrap(),
                version: envelope["version"].as_u64().unwrap() as u32,
                digest: envelope["digest"].as_str().unwrap(),
            };
            let verdict = verify_envelope(case["jws"].as_str().unwrap(), &envelope, &jwks);
            assert_eq!(
                verdict.is_ok(),
                case["valid"],
                "{}: {verdict:?}",
                case["name"]
            );
        }
    }

    #[test]
    fn canonical_json_and_digests_are_the_shared_vectors() {
        let vectors = vectors("canonical-json.json");
        for case in vectors["cases"].as_array().unwrap() {
            let value: Value = serde_json::from_str(case["input"].as_str().unwrap()).unwrap();
            let canonical = canonical_json(&value);
            assert_eq!(canonical, case["canonical"], "{}", case["name"]);
            assert_eq!(
                digest_of_canonical(canonical.as_bytes()),
                case["digest"],
                "{}",
                case["name"]
            );
        }
    }

    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn the_digest_ignores_key_order_and_number_spelling() {
        let a = serde_json::json!({"b": 1, "a": [1.0, "x"]});
        let b: Value = serde_json::from_str(r#"{"a":[1,"x"],"b":1.0}"#).unwrap();
        assert_eq!(
            digest_of_canonical(canonical_json(&a).as_bytes()),
            digest_of_canonical(canonical_json(&b).as_bytes())
        );
    }
}
