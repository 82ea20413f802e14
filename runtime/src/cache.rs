//! The last-known-good state on disk: the signed bundles, their revisions
//! and the JWKS that verified them, written atomically (temporary file,
//! fsync, rename) so a crash leaves the old file or the new one, never half.
//! Read back, every bundle is verified again before it is used.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::bundle::{Jwks, verify};
use crate::state::{Source, State, VerifiedBundle};

/// Version of the file format.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct CachedBundle {
    jws: String,
    revision: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    namespace: String,
    names: Vec<String>,
    revision: u64,
    jwks: Jwks,
    bundles: Vec<CachedBundle>,
    /// When the state was verified, in milliseconds since the Unix epoch;
    /// absent from the files of earlier versions, whose modification time
    /// stands for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verified_at_unix_ms: Option<u64>,
}

/// The cache of one subscription.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
    namespace: String,
    names: Vec<String>,
}

impl Cache {
    /// The cache of `namespace` (and `names`) in `dir`.
    pub fn new(dir: &Path, namespace: &str, names: &[String]) -> Self {
        Cache {
            path: dir.join(format!("{namespace}.state.json")),
            namespace: namespace.to_owned(),
            names: names.to_vec(),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the last verified checkpoint note of the server's tree is.
    fn tree_path(&self) -> PathBuf {
        self.path.with_extension("tree")
    }

    /// The last verified checkpoint note of the server's tree, if any.
    pub fn load_tree(&self) -> std::io::Result<Option<String>> {
        read_if_any(&self.tree_path())
    }

    /// Keeps `note` as the last verified checkpoint note, atomically.
    pub fn save_tree(&self, note: &str) -> std::io::Result<()> {
        write_atomically(&self.tree_path(), note.as_bytes())
    }

    /// Where the leaf of the last restore taken is.
    fn restore_path(&self) -> PathBuf {
        self.path.with_extension("restore")
    }

    /// The leaf of the last restore of the server's log taken, if any.
    pub fn load_restore(&self) -> std::io::Result<Option<u64>> {
        read_if_any(&self.restore_path())?
            .map(|text| {
                text.trim()
                    .parse()
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
            })
            .transpose()
    }

    /// Keeps `leaf` as the last restore taken, atomically.
    pub fn save_restore(&self, leaf: u64) -> std::io::Result<()> {
        write_atomically(&self.restore_path(), leaf.to_string().as_bytes())
    }

    /// The cached state and its JWKS, verified again; `Ok(None)` when there
    /// is no cache yet, `Err` with the reason when it cannot be trusted.
    pub fn load(&self) -> Result<Option<(State, Jwks)>, String> {
        let modified = std::fs::metadata(&self.path).and_then(|metadata| metadata.modified());
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot read it: {error}")),
        };
        let file: CacheFile =
            serde_json::from_slice(&text).map_err(|error| format!("it is not a cache: {error}"))?;
        if file.format != FORMAT {
            return Err(format!("its format {} is not {FORMAT}", file.format));
        }
        if file.namespace != self.namespace || file.names != self.names {
            return Err(format!(
                "it holds namespace {} {:?}, not {} {:?}",
                file.namespace, file.names, self.namespace, self.names
            ));
        }
        let mut bundles = BTreeMap::new();
        for cached in file.bundles {
            let claims = verify(&cached.jws, &file.jwks)
                .map_err(|error| format!("a bundle does not verify: {error}"))?;
            let Some(name) = claims.sub.strip_prefix(&format!("{}/", self.namespace)) else {
                return Err(format!("a bundle of {} is in it", claims.sub));
            };
            let key_id = crate::bundle::key_id(&cached.jws).map_err(|error| error.to_string())?;
            bundles.insert(
                name.to_owned(),
                VerifiedBundle {
                    name: name.to_owned(),
                    version: claims.ver,
                    label: claims.label,
                    digest: claims.digest,
                    revision: cached.revision,
                    key_id,
                    body: claims.body,
                    jws: cached.jws,
                },
            );
        }
        let verified_at = match file.verified_at_unix_ms {
            Some(millis) => UNIX_EPOCH + Duration::from_millis(millis),
            None => modified.unwrap_or_else(|_| SystemTime::now()),
        };
        let state = State {
            namespace: file.namespace,
            revision: file.revision,
            bundles,
            source: Source::Cache,
            verified_at,
        };
        Ok(Some((state, file.jwks)))
    }

    /// Replaces the cache with `state`, atomically.
    pub fn save(&self, state: &State, jwks: &Jwks) -> std::io::Result<()> {
        let file = CacheFile {
            format: FORMAT,
            namespace: self.namespace.clone(),
            names: self.names.clone(),
            revision: state.revision,
            jwks: jwks.clone(),
            bundles: state
                .bundles
                .values()
                .map(|bundle| CachedBundle {
                    jws: bundle.jws.clone(),
                    revision: bundle.revision,
                })
                .collect(),
            verified_at_unix_ms: state
                .verified_at
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|since| since.as_millis() as u64),
        };
        write_atomically(
            &self.path,
            &serde_json::to_vec(&file).map_err(std::io::Error::other)?,
        )
    }
}

/// Replaces `path` with `contents`: a temporary file, fsync, rename.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut writer = std::fs::File::create(&temporary)?;
    writer.write_all(contents)?;
    writer.sync_all()?;
    std::fs::rename(&temporary, path)?;
    // The rename itself is durable once the directory is.
    std::fs::File::open(dir)?.sync_all()
}

/// The text of `path`, or `None` when there is no such file.
fn read_if_any(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}
