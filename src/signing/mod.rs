//! Ed25519 signing keys and the signing of bundles. The only module that
//! touches private key material.
//!
//! The bundle format itself (claims, JWK, JWKS, verification) lives in the
//! `policyhub-runtime` crate, which runtimes use to verify what this module
//! signs: one definition for both sides.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, Header};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};

pub use policyhub_runtime::bundle::{BUNDLE_TYPE, BundleClaims, Jwk, Jwks, VerifyError, verify};
pub use policyhub_runtime::checkpoint::{CHECKPOINT_TYPE, CheckpointClaims, verify_checkpoint};

use crate::domain::subscription::WebhookSecret;
use crate::domain::{PolicyBody, Requirement};

mod note;
mod opa;
pub use note::verifier_key;
pub use opa::{OPA_ALGORITHM, OpaKeySource, OpaSigningKey};

/// File name of the key generated on first start when none is configured.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

/// A private key that can sign bundles.
#[derive(Clone)]
pub struct SigningKey {
    jwk: Jwk,
    /// The key, parsed once: it signs bundles, checkpoints and the notes
    /// of the log's Merkle tree.
    pair: std::sync::Arc<Ed25519KeyPair>,
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
    /// `openssl genpkey -algorithm ed25519` or `policyhub generate-key`).
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
            pair: std::sync::Arc::new(pair),
        })
    }

    /// A new random key and its PKCS#8 PEM encoding.
    pub fn generate() -> anyhow::Result<(Self, String)> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec()));
        Ok((Self::from_pkcs8_der(document.as_ref())?, pem_text))
    }

    /// The key id (RFC 7638 thumbprint; the JWK's and the JWS header's
    /// `kid`).
    pub fn key_id(&self) -> &str {
        &self.jwk.kid
    }

    /// The public half.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs a bundle's claims into a JWS compact serialization.
    pub fn sign(&self, claims: &BundleClaims) -> crate::domain::Result<String> {
        self.sign_as(BUNDLE_TYPE, claims)
    }

    /// Signs a checkpoint's claims into a JWS compact serialization.
    pub fn sign_checkpoint(&self, claims: &CheckpointClaims) -> crate::domain::Result<String> {
        self.sign_as(CHECKPOINT_TYPE, claims)
    }

    /// Signs a checkpoint body of the log's tree into a C2SP signed note,
    /// under `origin` as key name.
    pub fn sign_note(&self, origin: &str, body: &str) -> crate::domain::Result<String> {
        note::sign(
            body,
            &note::NoteSigner {
                name: origin,
                pair: &self.pair,
            },
        )
    }

    /// The JWS compact serialization (RFC 7515 §7.1) of `claims`, signed
    /// with the key pair parsed once when the key was read: `jsonwebtoken`'s
    /// `encode` would parse the PKCS#8 document again for every signature.
    /// The result is byte for byte what `encode` writes.
    fn sign_as(&self, typ: &str, claims: &impl serde::Serialize) -> crate::domain::Result<String> {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.jwk.kid.clone());
        header.typ = Some(typ.into());
        let failed = |error: serde_json::Error| {
            crate::domain::Error::Internal(format!("signing a {typ} failed: {error}"))
        };
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(failed)?);
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(failed)?);
        let message = format!("{header}.{claims}");
        let signature = self.pair.sign(message.as_bytes());
        Ok(format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
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

/// A new webhook signing secret of 256 random bits, in Standard Webhooks
/// form. The system generator failing is a broken host, not a request's
/// fault: it panics, as ring's own key generation would.
pub fn new_webhook_secret() -> WebhookSecret {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes)
        .expect("the system random generator works");
    WebhookSecret::from_random(&bytes)
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
                    key_id = %key.key_id(),
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

/// The claims of a version being published.
pub fn claims_for(
    issuer: &str,
    subject: &str,
    version: u32,
    label: Option<String>,
    body: &PolicyBody,
    requirements: &[Requirement],
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
        requirements: requirements
            .iter()
            .map(|requirement| policyhub_runtime::bundle::Requirement {
                name: requirement.name.to_string(),
                range: requirement.range.to_string(),
            })
            .collect(),
    }
}

/// The digest a bundle's JWS signed, read without checking the signature:
/// the service holds its stored bodies to what it signed, while a client
/// checks the signature itself against the published keys.
pub fn signed_digest(jws: &str) -> crate::domain::Result<String> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

    #[derive(serde::Deserialize)]
    struct Signed {
        digest: String,
    }
    let unreadable = |why: String| {
        crate::domain::Error::DataLoss(format!("a stored signature is unreadable: {why}"))
    };
    let payload = jws
        .split('.')
        .nth(1)
        .ok_or_else(|| unreadable("it is not a compact JWS".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|error| unreadable(error.to_string()))?;
    let signed: Signed =
        serde_json::from_slice(&bytes).map_err(|error| unreadable(error.to_string()))?;
    Ok(signed.digest)
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
            &[],
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_signature_is_byte_for_byte_what_jsonwebtoken_writes() {
        let (key, pem_text) = SigningKey::generate().unwrap();
        let der = pem::parse(&pem_text).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.key_id().to_owned());
        header.typ = Some(BUNDLE_TYPE.into());
        let claims = sample_claims();
        let theirs = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(der.contents()),
        )
        .unwrap();
        assert_eq!(key.sign(&claims).unwrap(), theirs);
    }

    #[test]
    fn the_signed_digest_is_read_from_the_payload() {
        let (key, _) = SigningKey::generate().unwrap();
        let claims = sample_claims();
        let jws = key.sign(&claims).unwrap();
        assert_eq!(signed_digest(&jws).unwrap(), claims.digest);
        assert!(matches!(
            signed_digest("not a jws"),
            Err(crate::domain::Error::DataLoss(_))
        ));
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
            Err(VerifyError::UnknownKey(signer.key_id().into()))
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
