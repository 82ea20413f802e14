//! The key OPA bundles are signed with (docs/src/guides/opa.md#signing).
//!
//! OPA verifies a bundle's `.signatures.json` with RSA, ECDSA or HMAC
//! keys, never Ed25519, so its bundles are signed with a key of their own:
//! ECDSA on P-256 (`ES256`), the smallest and fastest of the algorithms
//! OPA takes. Published as OPA's `keys` configuration takes it: a PEM
//! public key under its id.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};
use sha2::{Digest, Sha256};

/// File name of the OPA signing key generated on first start when none is
/// configured.
pub const GENERATED_OPA_KEY_FILE: &str = "opa-signing-key.pem";

/// The algorithm OPA's `keys` configuration names for these keys.
pub const OPA_ALGORITHM: &str = "ES256";

/// A private P-256 key that signs OPA bundles.
#[derive(Clone)]
pub struct OpaSigningKey {
    key_id: String,
    public_pem: String,
    pair: std::sync::Arc<EcdsaKeyPair>,
}

impl std::fmt::Debug for OpaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private half never prints.
        f.debug_struct("OpaSigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl OpaSigningKey {
    /// Reads a PKCS#8 PEM P-256 private key (as written by `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
    pub fn from_pem(pem_text: &str) -> anyhow::Result<Self> {
        let pem = pem::parse(pem_text).context("not a PEM file")?;
        if pem.tag() != "PRIVATE KEY" {
            bail!(
                "expected a PKCS#8 \"PRIVATE KEY\" PEM block, found {:?}",
                pem.tag()
            );
        }
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pem.contents(),
            &SystemRandom::new(),
        )
        .map_err(|error| anyhow::anyhow!("not a P-256 PKCS#8 private key: {error}"))?;
        let point = pair.public_key().as_ref();
        let public = p256::PublicKey::from_sec1_bytes(point)
            .map_err(|error| anyhow::anyhow!("not a P-256 public key: {error}"))?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|error| anyhow::anyhow!("encoding the public key: {error}"))?;
        Ok(OpaSigningKey {
            key_id: thumbprint(point),
            public_pem,
            pair: std::sync::Arc::new(pair),
        })
    }

    /// A new random key and its PKCS#8 PEM encoding.
    pub fn generate() -> anyhow::Result<(Self, String)> {
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", document.as_ref().to_vec()));
        Ok((Self::from_pem(&pem_text)?, pem_text))
    }

    /// The key id: the RFC 7638 thumbprint of its JWK, which the JWS header
    /// names and OPA's `keys` configuration is keyed by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key, PEM-encoded (SubjectPublicKeyInfo), as OPA's `keys`
    /// configuration takes it.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// `claims` signed into a JWS compact serialization with `ES256`, the
    /// header naming this key.
    pub fn sign(&self, claims: &impl serde::Serialize) -> crate::domain::Result<String> {
        let failed =
            |error: String| crate::domain::Error::Internal(format!("signing a bundle: {error}"));
        let header = serde_json::json!({"alg": OPA_ALGORITHM, "kid": self.key_id, "typ": "JWT"});
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let claims = serde_json::to_vec(claims).map_err(|error| failed(error.to_string()))?;
        let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let signature = self
            .pair
            .sign(&SystemRandom::new(), message.as_bytes())
            .map_err(|_| failed("the system random generator failed".into()))?;
        Ok(format!(
            "{message}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The RFC 7638 thumbprint of the P-256 JWK of the uncompressed `point`
/// (`0x04 || x || y`).
fn thumbprint(point: &[u8]) -> String {
    let (x, y) = point[1..].split_at(32);
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Where the OPA signing keys come from: the configured PKCS#8 PEM files
/// (the first signs, every one is published), or one generated into the
/// data directory on first start. Read at start and again on every reload
/// (SIGHUP), as the bundle signing keys are.
#[derive(Debug, Clone)]
pub struct OpaKeySource {
    key_files: Vec<PathBuf>,
    data_dir: PathBuf,
}

impl OpaKeySource {
    /// The files `key_files`, or the key generated in `data_dir` when none.
    pub fn new(key_files: &[PathBuf], data_dir: &Path) -> Self {
        OpaKeySource {
            key_files: key_files.to_vec(),
            data_dir: data_dir.to_owned(),
        }
    }

    /// The keys, signer first; the generated key is made on first use.
    pub fn load(&self) -> anyhow::Result<Vec<OpaSigningKey>> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(anyhow::Error::from)
                .and_then(|text| OpaSigningKey::from_pem(&text))
                .with_context(|| format!("reading {}", path.display()))
        };
        if !self.key_files.is_empty() {
            return self.key_files.iter().map(|path| read(path)).collect();
        }
        let path = self.data_dir.join(GENERATED_OPA_KEY_FILE);
        if path.exists() {
            return Ok(vec![read(&path)?]);
        }
        let (key, pem_text) = OpaSigningKey::generate()?;
        super::write_private_file(&path, pem_text.as_bytes())?;
        tracing::warn!(
            path = %path.display(),
            key_id = %key.key_id(),
            "no OPA signing key configured: generated one; back it up, or configure signing.opa_key_files"
        );
        Ok(vec![key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_the_published_key() {
        let (key, pem_text) = OpaSigningKey::generate().unwrap();
        let again = OpaSigningKey::from_pem(&pem_text).unwrap();
        assert_eq!(key.key_id(), again.key_id());
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        let jws = key.sign(&serde_json::json!({"files": []})).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_ec_pem(key.public_pem().as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let header = jsonwebtoken::decode_header(&jws).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.key_id()));
        jsonwebtoken::decode::<serde_json::Value>(&jws, &decoding, &validation).unwrap();
    }

    #[test]
    fn an_ed25519_key_is_not_an_opa_key() {
        let (_, ed25519) = super::super::SigningKey::generate().unwrap();
        let refused = OpaSigningKey::from_pem(&ed25519).unwrap_err();
        assert!(refused.to_string().contains("P-256"), "{refused}");
    }
}
