//! The last-known-good state on disk: the signed bundles, their revisions,
//! the JWKS that verified them and the keys known revoked, written atomically (temporary file,
//! fsync, rename) so a crash leaves the old file or the new one, never half.
//! Read back, every bundle is verified again before it is used.
//!
//! Several subscriptions may share a cache directory and follow one
//! namespace, in one process or in several: each writes through a
//! temporary file of its own (a random name, created only if no file has
//! it), so that one writer never truncates or renames away another's.
//!
//! The file system is blocking I/O (and an fsync may take milliseconds),
//! while the library runs on its embedder's executor, perhaps a
//! current-thread one: every read and write runs on tokio's blocking pool,
//! so the executor goes on serving the embedder's tasks meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{File, OpenOptions},
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
    /// The ids of the keys known revoked when it was written: a bundle
    /// they signed is refused when the file is read back. Absent from the
    /// files of earlier versions.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    revoked_key_ids: BTreeSet<String>,
    bundles: Vec<CachedBundle>,
    /// When the state was verified, in milliseconds since the Unix epoch;
    /// absent from the files of earlier versions, whose modification time
    /// stands for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verified_at_unix_ms: Option<u64>,
}

/// A cached state, the JWKS that verified it and the keys known revoked.
pub type Loaded = (State, Jwks, BTreeSet<String>);

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
    pub async fn load_tree(&self) -> std::io::Result<Option<String>> {
        let path = self.tree_path();
        off_executor(move || read_if_any(&path)).await?
    }

    /// Keeps `note` as the last verified checkpoint note, atomically.
    pub async fn save_tree(&self, note: &str) -> std::io::Result<()> {
        let (path, contents) = (self.tree_path(), note.as_bytes().to_vec());
        off_executor(move || write_atomically(&path, &contents)).await?
    }

    /// Where the leaf of the last restore taken is.
    fn restore_path(&self) -> PathBuf {
        self.path.with_extension("restore")
    }

    /// The leaf of the last restore of the server's log taken, if any.
    pub async fn load_restore(&self) -> std::io::Result<Option<u64>> {
        let path = self.restore_path();
        off_executor(move || read_if_any(&path))
            .await??
            .map(|text| {
                text.trim()
                    .parse()
                    .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))
            })
            .transpose()
    }

    /// Keeps `leaf` as the last restore taken, atomically.
    pub async fn save_restore(&self, leaf: u64) -> std::io::Result<()> {
        let path = self.restore_path();
        off_executor(move || write_atomically(&path, leaf.to_string().as_bytes())).await?
    }

    /// The cached state, its JWKS and the keys known revoked, verified
    /// again; `Ok(None)` when there is no cache yet, `Err` with the reason
    /// when it cannot be trusted (a bundle signed by a revoked key among
    /// them).
    pub async fn load(&self) -> Result<Option<Loaded>, String> {
        let cache = self.clone();
        off_executor(move || cache.load_blocking())
            .await
            .map_err(|error| format!("cannot read it: {error}"))?
    }

    /// [`load`](Self::load), on the calling thread.
    fn load_blocking(&self) -> Result<Option<Loaded>, String> {
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
            let key_id = crate::bundle::key_id(&cached.jws)
                .map_err(|error| format!("a bundle does not verify: {error}"))?;
            if file.revoked_key_ids.contains(&key_id) {
                return Err(format!("a bundle is signed by revoked key {key_id:?}"));
            }
            let claims = verify(&cached.jws, &file.jwks)
                .map_err(|error| format!("a bundle does not verify: {error}"))?;
            let Some(name) = claims.sub.strip_prefix(&format!("{}/", self.namespace)) else {
                return Err(format!("a bundle of {} is in it", claims.sub));
            };
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
        Ok(Some((state, file.jwks, file.revoked_key_ids)))
    }

    /// Replaces the cache with `state`, atomically.
    pub async fn save(
        &self,
        state: &State,
        jwks: &Jwks,
        revoked: &BTreeSet<String>,
    ) -> std::io::Result<()> {
        let file = CacheFile {
            format: FORMAT,
            namespace: self.namespace.clone(),
            names: self.names.clone(),
            revision: state.revision,
            jwks: jwks.clone(),
            revoked_key_ids: revoked.clone(),
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
        let contents = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        off_executor(move || write_atomically(&path, &contents)).await?
    }
}

/// Runs `work` on tokio's blocking pool and waits for it without holding
/// the executor. A panic in it goes on unwinding here, as it would have
/// on the executor.
async fn off_executor<T>(work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T>
where
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime shuts down before the work began.
        Err(error) => Err(std::io::Error::other(error)),
    }
}

/// Replaces `path` with `contents`: a temporary file of its own, fsync,
/// rename. The temporary file is removed when any step fails.
fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let (mut writer, temporary) = create_temporary(path)?;
    let written = writer
        .write_all(contents)
        .and_then(|()| writer.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    // The rename itself is durable once the directory is.
    File::open(dir)?.sync_all()
}

/// How many random names a temporary file tries before it gives up: a
/// name is taken only by a leftover of a writer that crashed, or by a
/// writer at work.
const TEMPORARY_NAME_ATTEMPTS: usize = 16;

/// A new file beside `path`, `<name>.<16 random hex digits>.tmp`, created
/// only if no file has that name (`O_EXCL`), and its path.
fn create_temporary(path: &Path) -> std::io::Result<(File, PathBuf)> {
    #[cfg(all(test, unix))]
    if let Some(fixed) = tests::fixed_temporary(path) {
        return Ok((OpenOptions::new().write(true).open(&fixed)?, fixed));
    }
    let mut attempt = 0;
    loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{:016x}.tmp", fastrand::u64(..)));
        let temporary = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
        {
            Ok(file) => return Ok((file, temporary)),
            Err(error)
                if error.kind() == std::io::ErrorKind::AlreadyExists
                    && attempt + 1 < TEMPORARY_NAME_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The text of `path`, or `None` when there is no such file.
fn read_if_any(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(all(test, unix))]
pub(crate) mod tests {
    use std::{
        ffi::CString,
        os::unix::ffi::OsStrExt,
        sync::{Mutex, mpsc},
        time::Duration,
    };

    use super::*;

    /// The files a test asked to be written through a temporary file of
    /// its choosing (a FIFO), by path; every other file gets a random one.
    static FIXED_TEMPORARIES: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());

    /// The temporary file a test chose for `path`, if any.
    pub(super) fn fixed_temporary(path: &Path) -> Option<PathBuf> {
        FIXED_TEMPORARIES.lock().unwrap().get(path).cloned()
    }

    /// A FIFO at `path`: opening it blocks until its other end is opened,
    /// a file system operation as slow as the test wants.
    fn make_fifo(path: &Path) {
        let path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo keeps no pointer.
        #[allow(unsafe_code)]
        let made = unsafe { libc::mkfifo(path.as_ptr(), 0o600) };
        assert_eq!(made, 0);
    }

    /// Runs `io`, stuck on opening `fifo`, next to a task that asks a
    /// thread to open the FIFO's other end; the thread waits five seconds
    /// for that and then opens it anyway. Whether the task got to ask (the
    /// executor ran it while `io` waited), and what the thread read.
    async fn executor_runs_while_stuck<T>(
        fifo: &Path,
        other_end: fn(&Path) -> Vec<u8>,
        io: impl Future<Output = T>,
    ) -> (bool, Vec<u8>) {
        let (ask, asked) = mpsc::channel::<()>();
        let fifo = fifo.to_owned();
        let thread = std::thread::spawn(move || {
            let in_time = asked.recv_timeout(Duration::from_secs(5)).is_ok();
            (in_time, other_end(&fifo))
        });
        let other_task = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = ask.send(());
        };
        tokio::join!(io, other_task);
        thread.join().unwrap()
    }

    fn state_of(namespace: &str) -> State {
        State {
            namespace: namespace.to_owned(),
            revision: 7,
            ..State::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_save_leaves_a_current_thread_executor_free_while_the_file_system_is_slow() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), "payments", &[]);
        let fifo = dir.path().join("payments.state.json.fifo");
        make_fifo(&fifo);
        FIXED_TEMPORARIES
            .lock()
            .unwrap()
            .insert(cache.path().to_owned(), fifo.clone());
        let (in_time, written) = executor_runs_while_stuck(
            &fifo,
            |fifo| std::fs::read(fifo).unwrap(),
            // A FIFO cannot be fsynced, so the save itself fails at the end;
            // what counts is the executor meanwhile.
            async {
                let _ = cache
                    .save(&state_of("payments"), &Jwks::default(), &BTreeSet::new())
                    .await;
            },
        )
        .await;
        let written: CacheFile = serde_json::from_slice(&written).unwrap();
        assert_eq!(
            (written.namespace.as_str(), written.revision),
            ("payments", 7)
        );
        assert!(
            in_time,
            "the executor stood still while the cache was written"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_load_leaves_a_current_thread_executor_free_while_the_file_system_is_slow() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), "payments", &[]);
        make_fifo(cache.path());
        let mut loaded = None;
        let (in_time, _) = executor_runs_while_stuck(
            cache.path(),
            |fifo| {
                std::fs::write(fifo, b"not a cache").unwrap();
                Vec::new()
            },
            async { loaded = Some(cache.load().await) },
        )
        .await;
        let refused = loaded.unwrap().unwrap_err();
        assert!(refused.starts_with("it is not a cache"), "{refused}");
        assert!(in_time, "the executor stood still while the cache was read");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), "payments", &[]);
        cache
            .save(&state_of("payments"), &Jwks::default(), &BTreeSet::new())
            .await
            .unwrap();
        cache.save_tree("a note").await.unwrap();
        cache.save_restore(12).await.unwrap();
        let (state, ..) = cache.load().await.unwrap().unwrap();
        assert_eq!((state.revision, state.source), (7, Source::Cache));
        assert_eq!(cache.load_tree().await.unwrap().as_deref(), Some("a note"));
        assert_eq!(cache.load_restore().await.unwrap(), Some(12));
    }

    /// The state of the shared cache vectors (`conformance/vectors/cache.json`),
    /// as this library puts it in force, and the JWKS that verifies it.
    fn shared_state() -> (State, Jwks) {
        let input = crate::bundle::tests::vectors("cache.json");
        let jwks: Jwks = serde_json::from_value(input["jwks"].clone()).unwrap();
        let namespace = input["namespace"].as_str().unwrap();
        let bundles = input["bundles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|cached| {
                let jws = cached["jws"].as_str().unwrap();
                let claims = verify(jws, &jwks).unwrap();
                let name = claims.sub.strip_prefix(&format!("{namespace}/")).unwrap();
                let bundle = VerifiedBundle {
                    name: name.to_owned(),
                    version: claims.ver,
                    label: claims.label,
                    digest: claims.digest,
                    revision: cached["revision"].as_u64().unwrap(),
                    key_id: crate::bundle::key_id(jws).unwrap(),
                    body: claims.body,
                    jws: jws.to_owned(),
                };
                (name.to_owned(), bundle)
            })
            .collect();
        let verified_at = Duration::from_millis(input["verified_at_unix_ms"].as_u64().unwrap());
        let state = State {
            namespace: namespace.to_owned(),
            revision: input["revision"].as_u64().unwrap(),
            bundles,
            source: Source::Server,
            verified_at: UNIX_EPOCH + verified_at,
        };
        (state, jwks)
    }

    /// Every library writes the shared state into its cache
    /// (`conformance/vectors/cache/<library>.state.json`, this library's
    /// held to what it writes now; `UPDATE_VECTORS=1` writes it anew), and
    /// reads back every library's, verified again, as the state it was.
    #[tokio::test]
    async fn the_shared_cache_vectors_are_written_here_and_read_from_every_library() {
        let (state, jwks) = shared_state();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), &state.namespace, &[]);
        cache.save(&state, &jwks, &BTreeSet::new()).await.unwrap();
        let written = std::fs::read_to_string(cache.path()).unwrap();
        let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/vectors/cache");
        let ours = vectors.join("rust.state.json");
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::create_dir_all(&vectors).unwrap();
            std::fs::write(&ours, &written).unwrap();
            return;
        }
        assert_eq!(std::fs::read_to_string(&ours).unwrap(), written);
        for library in ["rust", "python", "typescript", "go"] {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::new(dir.path(), &state.namespace, &[]);
            std::fs::copy(vectors.join(format!("{library}.state.json")), cache.path()).unwrap();
            let (loaded, loaded_jwks, revoked) = cache.load().await.unwrap().unwrap();
            let expected = State {
                source: Source::Cache,
                ..state.clone()
            };
            assert_eq!(loaded, expected, "{library}");
            assert_eq!((loaded_jwks, revoked), (jwks.clone(), BTreeSet::new()));
        }
    }

    /// A state of one bundle at revision 7 of `payments`, signed by a key
    /// made from `seed`, and that key's JWKS.
    pub(crate) fn signed_state(seed: u8) -> (State, Jwks) {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        use ed25519_dalek::Signer;

        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let jwk = crate::bundle::Jwk::ed25519(key.verifying_key().as_bytes());
        let body = serde_json::json!({"limit": 10});
        let digest =
            crate::bundle::digest_of_canonical(crate::bundle::canonical_json(&body).as_bytes());
        let header = serde_json::json!({
            "alg": "EdDSA", "kid": jwk.kid, "typ": crate::bundle::BUNDLE_TYPE,
        });
        let claims = serde_json::json!({
            "iss": "policyhub", "sub": "payments/limits", "ver": 1,
            "digest": digest, "body": body, "iat": 0,
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes());
        let bundle = VerifiedBundle {
            name: "limits".into(),
            version: 1,
            label: None,
            digest,
            revision: 7,
            key_id: jwk.kid.clone(),
            body,
            jws: format!("{signed}.{signature}"),
        };
        let state = State {
            bundles: BTreeMap::from([("limits".to_owned(), bundle)]),
            ..state_of("payments")
        };
        (state, Jwks { keys: vec![jwk] })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cached_state_signed_by_a_revoked_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path(), "payments", &[]);
        let (state, jwks) = signed_state(7);
        cache.save(&state, &jwks, &BTreeSet::new()).await.unwrap();
        let (loaded, ..) = cache.load().await.unwrap().unwrap();
        assert_eq!(loaded.bundles.len(), 1, "the good cache loads");
        let revoked = BTreeSet::from([jwks.keys[0].kid.clone()]);
        cache.save(&state, &jwks, &revoked).await.unwrap();
        let refused = cache.load().await.unwrap_err();
        assert!(refused.contains("revoked key"), "{refused}");
    }

    /// Two subscriptions to one namespace, one cache directory: each keeps
    /// its own `Cache`, and both write it at once, over and over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_subscriptions_of_one_namespace_write_one_cache_directory_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (state, jwks) = signed_state(7);
        let first = Cache::new(dir.path(), "payments", &[]);
        first.save(&state, &jwks, &BTreeSet::new()).await.unwrap();
        first.save_tree("a note").await.unwrap();
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let cache = Cache::new(dir.path(), "payments", &[]);
                let (state, jwks) = (state.clone(), jwks.clone());
                tokio::spawn(async move {
                    for leaf in 0..100 {
                        cache.save(&state, &jwks, &BTreeSet::new()).await?;
                        cache.save_tree("a note").await?;
                        cache.save_restore(leaf).await?;
                    }
                    std::io::Result::Ok(())
                })
            })
            .collect();
        let mut reads = 0;
        while writers.iter().any(|writer| !writer.is_finished()) {
            let (loaded, ..) = first
                .load()
                .await
                .expect("the cache reads whole while it is written")
                .expect("the cache is there");
            assert_eq!(loaded.bundles.len(), 1);
            assert_eq!(first.load_tree().await.unwrap().as_deref(), Some("a note"));
            reads += 1;
        }
        for writer in writers {
            writer.await.unwrap().expect("no write fails");
        }
        assert!(reads > 0);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "payments.state.json",
                "payments.state.restore",
                "payments.state.tree"
            ],
            "no temporary file is left behind"
        );
    }
}
