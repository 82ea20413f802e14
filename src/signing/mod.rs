//! Ed25519 signing keys, signed bundles (JWS) and the JWKS that verifies
//! them. The only module that touches key material.
//!
//! A bundle is a JWS compact serialization whose payload carries the whole
//! policy, so a runtime can verify it offline with nothing but the JWKS:
//!
//! ```text
//! header  {"alg":"EdDSA","kid":"<RFC 7638 thumbprint>","typ":"policyhub-bundle+jwt"}
//! payload {"iss","sub":"namespace/name","ver","label","digest","body","iat"}
//! ```
//!
//! The explicit `typ` (RFC 8725 §3.11) keeps a bundle from ever being
//! accepted where an access token is expected, and the other way round.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{PolicyBody, canonical_json};

/// The JWS `typ` header of every bundle.
pub const BUNDLE_TYPE: &str = "policyhub-bundle+jwt";

/// File name of the key generated on first start when none is configured.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

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
        let x = URL_SAFE_NO_PAD.encode(public_key);
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// RFC 7638 thumbprint of an Ed25519 key: the SHA-256 of the required
/// members in lexicographic order, base64url.
pub fn thumbprint(x: &str) -> String {
    let required = serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": x});
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_json(&required).as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// A private key that can sign bundles.
pub struct SigningKey {
    jwk: Jwk,
    encoding_key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private half never prints.
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key (as written by
    /// `openssl genpkey -algorithm ed25519` or `policyhub keys generate`).
    pub fn from_pem(pem_text: &str) -> anyhow::Result<Self> {
        let pem = pem::parse(pem_text).context("not a PEM file")?;
        if pem.tag() != "PRIVATE KEY" {
            bail!(
                "expected a PKCS#8 \"PRIVATE KEY\" PEM block, found {:?}",
                pem.tag()
            );
        }
        Self::from_pkcs8_der(pem.contents())
    }

    fn from_pkcs8_der(der: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|error| anyhow::anyhow!("not an Ed25519 PKCS#8 private key: {error}"))?;
        Ok(SigningKey {
            jwk: Jwk::ed25519(pair.public_key().as_ref()),
            encoding_key: EncodingKey::from_ed_der(der),
        })
    }

    /// A new random key and its PKCS#8 PEM encoding.
    pub fn generate() -> anyhow::Result<(Self, String)> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec()));
        Ok((Self::from_pkcs8_der(document.as_ref())?, pem_text))
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The public half.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs the claims into a JWS compact serialization.
    pub fn sign(&self, claims: &BundleClaims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.jwk.kid.clone());
        header.typ = Some(BUNDLE_TYPE.into());
        jsonwebtoken::encode(&header, claims, &self.encoding_key).context("signing the bundle")
    }
}

/// Creates `path` with mode 0600 (refusing to overwrite) holding `contents`.
fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Writes a new key to `path` with mode 0600, refusing to overwrite.
pub fn write_new_key(path: &Path) -> anyhow::Result<SigningKey> {
    let (key, pem_text) = SigningKey::generate()?;
    write_private_file(path, pem_text.as_bytes())?;
    Ok(key)
}

/// Writes a new random 256-bit secret, hex-encoded, to `path` with mode
/// 0600 (refusing to overwrite) and returns it.
pub fn write_new_secret(path: &Path) -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    write_private_file(path, secret.as_bytes())?;
    Ok(secret)
}

/// Where the signing keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Configured PKCS#8 PEM files: the first signs, every one verifies.
    /// Rotated by replacing the files and reloading (SIGHUP).
    Files(Vec<PathBuf>),
    /// One key in the data directory, generated on first start and replaced
    /// by [`KeySource::rotate`].
    Generated(PathBuf),
}

impl KeySource {
    /// The configured files, or the generated key in `data_dir`.
    pub fn new(key_files: &[PathBuf], data_dir: &Path) -> Self {
        if key_files.is_empty() {
            KeySource::Generated(data_dir.join(GENERATED_KEY_FILE))
        } else {
            KeySource::Files(key_files.to_vec())
        }
    }

    /// The keys, signer first; the generated key is made on first use.
    pub fn load(&self) -> anyhow::Result<Vec<SigningKey>> {
        match self {
            KeySource::Files(paths) => paths.iter().map(|path| read_key_file(path)).collect(),
            KeySource::Generated(path) if path.exists() => Ok(vec![read_key_file(path)?]),
            KeySource::Generated(path) => {
                let key = write_new_key(path)?;
                tracing::warn!(
                    path = %path.display(),
                    kid = key.kid(),
                    "no signing key configured: generated one; back it up, or configure signing.key_files"
                );
                Ok(vec![key])
            }
        }
    }

    /// Replaces the generated key with a new one. The old private key is
    /// gone; its public key stays in the database for verification.
    pub fn rotate(&self) -> anyhow::Result<SigningKey> {
        let KeySource::Generated(path) = self else {
            bail!(
                "signing keys come from signing.key_files: put the new key first in the files and send SIGHUP"
            );
        };
        let staged = path.with_extension("pem.new");
        if staged.exists() {
            fs::remove_file(&staged)?;
        }
        let key = write_new_key(&staged)?;
        fs::rename(&staged, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(key)
    }
}

fn read_key_file(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pem(&text).with_context(|| format!("reading {}", path.display()))
}

/// Why a bundle did not verify.
#[derive(Debug, thiserror::Error, PartialEq)]
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

/// Verifies a bundle offline against a JWKS: header type, algorithm, key,
/// signature, and that the digest claim matches the body.
pub fn verify(jws: &str, jwks: &Jwks) -> Result<BundleClaims, VerifyError> {
    let header = jsonwebtoken::decode_header(jws)
        .map_err(|error| VerifyError::Malformed(error.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(VerifyError::BadSignature(format!(
            "algorithm {:?} is not EdDSA",
            header.alg
        )));
    }
    if header.typ.as_deref() != Some(BUNDLE_TYPE) {
        return Err(VerifyError::BadSignature(format!(
            "type {:?} is not {BUNDLE_TYPE}",
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
    // A bundle stays valid until another version is activated: it has no
    // expiry and no audience.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<BundleClaims>(jws, &key, &validation)
        .map_err(|error| VerifyError::BadSignature(error.to_string()))?
        .claims;
    let body = PolicyBody::parse("body", claims.body.clone(), usize::MAX)
        .map_err(|error| VerifyError::Malformed(error.to_string()))?;
    if body.digest().as_str() != claims.digest {
        return Err(VerifyError::DigestMismatch {
            claimed: claims.digest,
            actual: body.digest().to_string(),
        });
    }
    Ok(claims)
}

/// The claims of a version being published.
pub fn claims_for(
    issuer: &str,
    subject: &str,
    version: u32,
    label: Option<String>,
    body: &PolicyBody,
    published_at: chrono::DateTime<chrono::Utc>,
) -> BundleClaims {
    BundleClaims {
        iss: issuer.to_owned(),
        sub: subject.to_owned(),
        ver: version,
        label,
        digest: body.digest().to_string(),
        body: body.value().clone(),
        iat: published_at.timestamp(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample_claims() -> BundleClaims {
        let body = PolicyBody::parse("body", json!({"limit": 10}), 1024).unwrap();
        claims_for(
            "policyhub",
            "payments/limits",
            3,
            Some("1.0.0".into()),
            &body,
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_signed_bundle_verifies_and_any_flipped_byte_fails() {
        let (key, _) = SigningKey::generate().unwrap();
        let jwks = Jwks {
            keys: vec![key.jwk().clone()],
        };
        let jws = key.sign(&sample_claims()).unwrap();
        assert_eq!(verify(&jws, &jwks).unwrap(), sample_claims_with_iat(&jws));
        for position in [0, jws.find('.').unwrap() + 3, jws.len() - 2] {
            let mut bytes = jws.clone().into_bytes();
            bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(verify(&tampered, &jwks).is_err(), "flipped byte {position}");
        }
    }

    fn sample_claims_with_iat(jws: &str) -> BundleClaims {
        let claims: BundleClaims = jsonwebtoken::dangerous::insecure_decode(jws)
            .unwrap()
            .claims;
        BundleClaims {
            iat: claims.iat,
            ..sample_claims()
        }
    }

    #[test]
    fn a_bundle_from_an_unknown_key_fails() {
        let (signer, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let jws = signer.sign(&sample_claims()).unwrap();
        let jwks = Jwks {
            keys: vec![other.jwk().clone()],
        };
        assert_eq!(
            verify(&jws, &jwks),
            Err(VerifyError::UnknownKey(signer.kid().into()))
        );
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
    fn openssl_style_pkcs8_v1_keys_load() {
        // RFC 8410 §10.3 example private key (PKCS#8 v1, no public key).
        let pem_text = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
            -----END PRIVATE KEY-----\n";
        let key = SigningKey::from_pem(pem_text).unwrap();
        let jwks = Jwks {
            keys: vec![key.jwk().clone()],
        };
        let jws = key.sign(&sample_claims()).unwrap();
        assert!(verify(&jws, &jwks).is_ok());
    }
}
