//! The policies of a namespace as files, swapped in whole per revision.
//!
//! Each revision is written to a directory of its own
//! (`.<namespace>.<revision>-<nonce>/`: `manifest.json` and
//! `policies/<name>.json`), synced, and then the symlink `<namespace>` is
//! swapped to it with one `rename`, as Kubernetes swaps a ConfigMap
//! volume's `..data`: a reader that opens `<namespace>/…` sees one whole
//! revision or the next, never half of one. Then the command runs; if it
//! fails (or outlasts its timeout) the link is swapped back, and the
//! revision is refused with its exit status and the tail of its standard
//! error; not with its command line, which may hold secrets and would
//! travel upstream in the report.
//!
//! A directory the link no longer points at is kept for a grace period,
//! measured in time and not in swaps: a reader that resolved the link
//! before a burst of revisions reads its whole revision however many swaps
//! happen meanwhile, and the directories of a burst are removed once it is
//! over.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Weak,
    time::Duration,
};

use anyhow::Context as _;
use policyhub_runtime::{Source, State};
use serde_json::json;
use tokio::{sync::Mutex, time::Instant};

use crate::domain::PolicyName;

/// What to run after each swap.
#[derive(Debug, Clone)]
pub struct Command {
    /// A shell command line (`sh -c`).
    pub line: String,
    /// After this long it is killed and counts as failed.
    pub timeout: Duration,
}

/// The characters of standard error kept in a refusal's reason.
const STDERR_TAIL: usize = 800;

/// One namespace's files.
#[derive(Debug)]
pub struct Files {
    root: PathBuf,
    namespace: String,
    command: Option<Command>,
    /// The directory the link points at.
    current: Option<PathBuf>,
    /// How long a directory is kept once the link moved off it.
    grace: Duration,
    /// The directories the link moved off, oldest first, with when.
    superseded: VecDeque<(PathBuf, Instant)>,
}

impl Files {
    /// The files of `namespace` under `root` (created if missing); a
    /// directory the link moves off is removed `grace` later.
    pub fn new(
        root: &Path,
        namespace: &str,
        command: Option<Command>,
        grace: Duration,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the render directory {}", root.display()))?;
        let link = root.join(namespace);
        if let Ok(metadata) = std::fs::symlink_metadata(&link)
            && !metadata.file_type().is_symlink()
        {
            anyhow::bail!(
                "{} exists and is not the link the agent keeps: move it away",
                link.display()
            );
        }
        let mut files = Files {
            root: root.to_owned(),
            namespace: namespace.to_owned(),
            command,
            current: std::fs::read_link(&link)
                .ok()
                .map(|target| root.join(target)),
            grace,
            superseded: VecDeque::new(),
        };
        // Those of an earlier run may still be read: they get the grace
        // period too.
        files.supersede_earlier_runs();
        Ok(files)
    }

    fn link(&self) -> PathBuf {
        self.root.join(&self.namespace)
    }

    /// Writes `state`, swaps it in and runs the command; on failure the
    /// previous files are back in force and the reason says why.
    pub async fn put_in_force(&mut self, state: &State) -> Result<(), String> {
        let dir = self.root.join(format!(
            ".{}.{}-{}",
            self.namespace,
            state.revision,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let written = {
            let (link, dir, state) = (self.link(), dir.clone(), state.clone());
            on_blocking_pool(move || {
                write_revision(&dir, &state)?;
                swap(&link, &dir)
            })
            .await
        };
        if let Err(error) = written {
            remove_in_background(vec![dir]);
            return Err(format!("cannot write the files: {error:#}"));
        }
        if let Err(reason) = self.run_command(&dir, state.revision).await {
            let (link, before) = (self.link(), self.current.clone());
            let restored = on_blocking_pool(move || match before {
                Some(before) => swap(&link, &before),
                None => std::fs::remove_file(&link).map_err(Into::into),
            })
            .await;
            if let Err(error) = restored {
                tracing::error!(%error, namespace = self.namespace, "cannot swap the previous files back");
            }
            // It was in force while the command ran: a reader may hold it.
            self.supersede(dir);
            self.remove_expired();
            return Err(reason);
        }
        if let Some(before) = self.current.replace(dir) {
            self.supersede(before);
        }
        self.remove_expired();
        Ok(())
    }

    fn supersede(&mut self, dir: PathBuf) {
        self.superseded.push_back((dir, Instant::now()));
    }

    /// Hands the directories superseded longer than the grace period ago
    /// to the blocking pool to remove; when the next one is due, if any.
    /// It returns at once: whoever holds the files' lock (a swap, the
    /// sweep) does not hold it while a large directory is removed.
    pub fn remove_expired(&mut self) -> Option<Instant> {
        let mut due = Vec::new();
        let mut next = None;
        while let Some((dir, since)) = self.superseded.front() {
            let expires = *since + self.grace;
            if expires > Instant::now() {
                next = Some(expires);
                break;
            }
            due.push(dir.clone());
            self.superseded.pop_front();
        }
        remove_in_background(due);
        next
    }

    /// Runs the command, if any, on the files now in force.
    async fn run_command(&self, dir: &Path, revision: u64) -> Result<(), String> {
        let Some(command) = &self.command else {
            return Ok(());
        };
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command.line)
            .env("POLICYHUB_NAMESPACE", &self.namespace)
            .env("POLICYHUB_REVISION", revision.to_string())
            .env("POLICYHUB_DIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot run the command: {error}"))?;
        let output = match tokio::time::timeout(command.timeout, child.wait_with_output()).await {
            Err(_) => {
                return Err(format!(
                    "the command did not finish within {}",
                    humantime::format_duration(command.timeout)
                ));
            }
            Ok(Err(error)) => return Err(format!("the command failed: {error}")),
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim_end();
        let tail_start = stderr
            .char_indices()
            .rev()
            .nth(STDERR_TAIL - 1)
            .map_or(0, |(index, _)| index);
        Err(format!(
            "the command ended with {}: {}",
            output.status,
            &stderr[tail_start..]
        ))
    }

    /// Counts the directories of this namespace left by an earlier run,
    /// other than the one in force, as superseded now.
    fn supersede_earlier_runs(&mut self) {
        let prefix = format!(".{}.", self.namespace);
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry.file_name().to_string_lossy().starts_with(&prefix)
                && entry.file_type().is_ok_and(|kind| kind.is_dir());
            if ours && self.current.as_ref() != Some(&path) {
                self.supersede(path);
            }
        }
    }
}

/// Removes each superseded directory of `files` once its grace period is
/// over, until the files are dropped; between swaps too, so the last
/// directories of a burst go when it is over.
pub async fn sweep(files: Weak<Mutex<Files>>) {
    loop {
        let next = {
            let Some(files) = files.upgrade() else {
                return;
            };
            let mut files = files.lock().await;
            // With nothing due, look again a grace period later (a second
            // at least: a grace of zero removes at the swap itself).
            files
                .remove_expired()
                .unwrap_or_else(|| Instant::now() + files.grace.max(Duration::from_secs(1)))
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Writes one revision's directory, synced.
fn write_revision(dir: &Path, state: &State) -> anyhow::Result<()> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    let mut manifest = serde_json::Map::new();
    for bundle in state.bundles.values() {
        // The server checked the name; a file name is checked again.
        PolicyName::parse("name", &bundle.name)?;
        let file = format!("policies/{}.json", bundle.name);
        let mut body = serde_json::to_vec_pretty(&bundle.body)?;
        body.push(b'\n');
        write_synced(&dir.join(&file), &body)?;
        manifest.insert(
            bundle.name.clone(),
            json!({
                "version": bundle.version, "label": bundle.label, "digest": bundle.digest,
                "revision": bundle.revision.to_string(), "keyId": bundle.key_id, "file": file,
            }),
        );
    }
    let source = match state.source {
        Source::Server => "server",
        Source::Cache => "cache",
    };
    let manifest = json!({
        "namespace": state.namespace,
        "revision": state.revision.to_string(),
        "source": source,
        "policies": manifest,
    });
    write_synced(
        &dir.join("manifest.json"),
        &serde_json::to_vec_pretty(&manifest)?,
    )?;
    std::fs::File::open(&policies)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Runs `work` on the blocking pool: writes, renames, syncs and removals
/// wait on the disk, and a runtime worker blocked on them would stall every
/// task it runs (the API's answers among them).
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// Removes `dirs` on the blocking pool, without waiting: a directory due
/// for removal is past its grace period or was never in force, so nothing
/// waits on it going, and a failure is only logged.
fn remove_in_background(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for dir in dirs {
            if let Err(error) = std::fs::remove_dir_all(&dir)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, dir = %dir.display(), "cannot remove a superseded revision's files");
            }
        }
    });
}

/// Points `link` at `dir` in one `rename`.
fn swap(link: &Path, dir: &Path) -> anyhow::Result<()> {
    let target = dir.file_name().context("a revision directory has a name")?;
    let parent = link.parent().context("the link has a directory")?;
    let temporary = parent.join(format!(
        ".{}.link-{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary)?;
    std::fs::rename(&temporary, link)
        .with_context(|| format!("swapping {} to {}", link.display(), dir.display()))?;
    std::fs::File::open(parent)?.sync_all()?;
    Ok(())
}
