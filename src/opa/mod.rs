//! OPA's bundle format (docs/src/guides/opa.md#the-bundle): what a
//! namespace served to OPA is sent as, a gzipped tarball of `.manifest`,
//! `data.json`, the Rego modules and `.signatures.json`, signed so that
//! OPA's own bundle verification accepts it.

mod digest;
mod discovery;

pub use discovery::{ENGINE_LABEL, discovery};

use std::io::Write as _;

use prost::bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::domain::rego::{BundleContent, BundleRoots};
use crate::domain::runtime::opa::OpaDue;
use crate::domain::{Error, Namespace, Result};
use crate::signing::OpaSigningKey;

/// A namespace's bundle at one revision, built once and served as is.
#[derive(Debug, Clone, PartialEq)]
pub struct OpaBundle {
    /// The revision at which the namespace last changed: the manifest's
    /// `revision`, which OPA reports as the bundle it runs.
    pub revision: u64,
    /// The entity tag: a digest of the bundle's files (not of its
    /// signature, which differs from one signing to the next), so that
    /// every replica tags one bundle alike.
    pub etag: String,
    /// The gzipped tarball.
    pub tarball: Bytes,
}

/// One file of the bundle, with the digest its signature claims.
struct File {
    name: String,
    bytes: Vec<u8>,
    digest: [u8; 32],
}

/// The signature's claims, as `opa sign` writes them.
#[derive(Serialize)]
struct Claims<'a> {
    files: Vec<FileClaim<'a>>,
    iss: &'static str,
    iat: i64,
}

#[derive(Serialize)]
struct FileClaim<'a> {
    name: &'a str,
    hash: String,
    algorithm: &'static str,
}

/// The bundle `given` of `namespace`, owning `roots`, holding `content`:
/// its manifest revision names its revision and versions (what OPA reports
/// as the bundle it runs), as does the manifest's metadata. Signed with
/// `key`.
pub fn build(
    namespace: &Namespace,
    given: &OpaDue,
    roots: &BundleRoots,
    content: &BundleContent,
    key: &OpaSigningKey,
    issued_at: i64,
) -> Result<OpaBundle> {
    let versions: Map<String, Value> = given
        .versions
        .iter()
        .map(|(name, version)| (name.to_string(), Value::from(*version)))
        .collect();
    let revision = given.revision;
    let manifest = json!({
        "revision": given.manifest_revision(),
        "roots": roots.paths(),
        "rego_version": 1,
        "metadata": {"policyhub": {
            "namespace": namespace.as_str(),
            "revision": revision,
            "policies": versions,
        }},
    });
    let data = Value::Object(content.data.clone());
    let structured = |name: &str, value: &Value| File {
        name: name.to_owned(),
        bytes: serde_json::to_vec(value).expect("a JSON value serializes"),
        digest: digest::structured(value),
    };
    let mut files = vec![
        structured(".manifest", &manifest),
        structured("data.json", &data),
    ];
    files.extend(content.modules.iter().map(|(path, source)| File {
        name: path.clone(),
        bytes: source.as_bytes().to_vec(),
        digest: digest::raw(source.as_bytes()),
    }));
    let etag = etag(&files);
    let claims = Claims {
        files: files
            .iter()
            .map(|file| FileClaim {
                name: &file.name,
                hash: hex(&file.digest),
                algorithm: "SHA-256",
            })
            .collect(),
        iss: "policyhub",
        iat: issued_at,
    };
    let signatures = json!({"signatures": [key.sign(&claims)?]});
    files.push(File {
        name: ".signatures.json".into(),
        bytes: serde_json::to_vec(&signatures).expect("a JSON value serializes"),
        digest: [0; 32],
    });
    Ok(OpaBundle {
        revision,
        etag,
        tarball: tarball(&files).map_err(|error| {
            Error::Internal(format!("writing the bundle of {namespace}: {error}"))
        })?,
    })
}

/// The entity tag of `files`: the first 128 bits of a SHA-256 over their
/// names and digests, hex.
fn etag(files: &[File]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update(file.name.as_bytes());
        hasher.update([0]);
        hasher.update(file.digest);
    }
    let digest: [u8; 32] = hasher.finalize().into();
    hex(&digest[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The files as a gzipped tarball of regular files, mode 0644, owned by
/// root, dated the epoch: the same files make the same bytes.
fn tarball(files: &[File]) -> std::io::Result<Bytes> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(gzip);
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, &file.name, file.bytes.as_slice())?;
    }
    let mut gzip = archive.into_inner()?;
    gzip.flush()?;
    Ok(Bytes::from(gzip.finish()?))
}

#[cfg(test)]
mod tests;
