//! A bearer token read from a file, as a workload holds one: Kubernetes
//! projects a ServiceAccount token into a file and replaces it (an atomic
//! swap of a symlink) about every hour, well before it expires. Every call
//! looks at the file's metadata (a `stat`, which follows the symlink) and
//! reads the file again only when it changed, so the next call and the
//! next stream carry a new token while an open stream stays open; a file
//! that cannot be read or is empty mid-rotation keeps the last good token,
//! and says so once.
//!
//! A file is taken as unchanged while its device, inode, size, modification
//! and status-change times are those of the last read. A file rewritten in
//! place within one tick of the file system's clock (a few milliseconds
//! on Linux, two seconds on FAT) keeps its times, so a file modified less
//! than [`SETTLING`] before a read is read again on every call until it
//! has settled, as git treats a "racily clean" index entry.

use std::{
    fs::Metadata,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use crate::subscription::TokenSource;

/// How long after its last modification a file's metadata is not trusted
/// to tell a change: it is read again on every call meanwhile.
const SETTLING: Duration = Duration::from_secs(2);

/// The token `path` holds (trimmed), read again whenever the file changed;
/// the last good one while the file cannot be read or is empty, none before
/// a first good read.
///
/// ```no_run
/// use policyhub_runtime::{Subscription, token_file};
///
/// let subscription = Subscription::new("https://policyhub.policyhub:50051", "payments")
///     .token(token_file("/var/run/secrets/policyhub/token"));
/// ```
pub fn token_file(path: impl Into<PathBuf>) -> TokenSource {
    let path = path.into();
    let file = Mutex::new(TokenFile::default());
    Arc::new(move || {
        file.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current(&path)
    })
}

/// What identifies one version of a file's contents without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// Device and inode: a symlink swapped, or a file replaced by a rename.
    identity: (u64, u64),
    len: u64,
    modified: Option<SystemTime>,
    /// The status change time: it moves even when a tool sets the
    /// modification time back.
    changed: (i64, i64),
}

impl Stamp {
    fn of(metadata: &Metadata) -> Self {
        #[cfg(unix)]
        let (identity, changed) = {
            use std::os::unix::fs::MetadataExt;
            (
                (metadata.dev(), metadata.ino()),
                (metadata.ctime(), metadata.ctime_nsec()),
            )
        };
        #[cfg(not(unix))]
        let (identity, changed) = ((0, 0), (0, 0));
        Stamp {
            identity,
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed,
        }
    }

    /// Whether the file was last modified long enough ago that a change
    /// of its contents would change its stamp.
    fn settled(&self, now: SystemTime) -> bool {
        self.modified
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= SETTLING)
    }
}

/// What the file gave last, whether it fails now (so a failure is logged
/// once, not on every call), and the stamp of the file it was read from.
#[derive(Default)]
struct TokenFile {
    token: Option<String>,
    failing: bool,
    /// The stamp of the file as read last, once settled: while the file
    /// shows it, the token is not read again.
    read_as: Option<Stamp>,
    /// How many times the file was read.
    #[cfg(test)]
    reads: usize,
}

impl TokenFile {
    /// The token to send: the one read last, unless the file changed since.
    fn current(&mut self, path: &Path) -> Option<String> {
        match std::fs::metadata(path) {
            Ok(metadata) => {
                let stamp = Stamp::of(&metadata);
                if self.read_as != Some(stamp) {
                    // Read after the stamp was taken: a change in between
                    // shows in the next call's stamp and is read then.
                    let read = self.read(path);
                    self.read_as = (read && stamp.settled(SystemTime::now())).then_some(stamp);
                }
            }
            Err(error) => {
                self.read_as = None;
                self.failed(path, &error.to_string());
            }
        }
        self.token.clone()
    }

    /// Reads the file; whether it could be read (empty or not).
    fn read(&mut self, path: &Path) -> bool {
        #[cfg(test)]
        {
            self.reads += 1;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) => {
                self.failed(path, &error.to_string());
                return false;
            }
        };
        let token = text.trim();
        if token.is_empty() {
            self.failed(path, "it is empty");
            return true;
        }
        if self.failing {
            tracing::info!(file = %path.display(), "the token file is readable again");
        } else if self.token.as_deref().is_some_and(|last| last != token) {
            tracing::info!(
                file = %path.display(),
                "the token file holds a new token; the next call carries it"
            );
        }
        self.token = Some(token.to_owned());
        self.failing = false;
        true
    }

    /// The file cannot give a token now: the last good one is kept.
    fn failed(&mut self, path: &Path, reason: &str) {
        if !self.failing {
            tracing::warn!(
                file = %path.display(),
                %reason,
                kept = self.token.is_some(),
                "cannot read the token file; the last good token is kept"
            );
        }
        self.failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `token` as the kubelet does: a new directory, then the
    /// `..data` symlink swapped onto it by a rename.
    fn project(dir: &Path, generation: u32, token: &str) {
        let data = dir.join(format!("..{generation}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("token"), token).unwrap();
        let staged = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &staged).unwrap();
        std::fs::rename(&staged, dir.join("..data")).unwrap();
    }

    #[test]
    fn a_projected_token_swapped_by_its_symlink_is_read_on_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path(), 1, "first\n");
        std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
        let source = token_file(dir.path().join("token"));
        assert_eq!(source().as_deref(), Some("first"));
        project(dir.path(), 2, "second\n");
        assert_eq!(source().as_deref(), Some("second"));
    }

    /// Sets the modification time of the file `path` leads to a minute
    /// back, as a token written a while ago has it.
    fn written_a_minute_ago(path: &Path) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn an_unchanged_token_file_is_read_once_and_a_rotation_at_the_next_call() {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path(), 1, "first\n");
        let path = dir.path().join("token");
        std::os::unix::fs::symlink("..data/token", &path).unwrap();
        written_a_minute_ago(&path);
        let mut file = TokenFile::default();
        for _ in 0..100 {
            assert_eq!(file.current(&path).as_deref(), Some("first"));
        }
        assert_eq!(file.reads, 1, "an unchanged file is read once");
        project(dir.path(), 2, "second\n");
        assert_eq!(file.current(&path).as_deref(), Some("second"));
        written_a_minute_ago(&path);
        for _ in 0..100 {
            assert_eq!(file.current(&path).as_deref(), Some("second"));
        }
        assert_eq!(
            file.reads, 3,
            "the rotated file is read once it changed, and once settled"
        );
    }

    #[test]
    fn a_file_rewritten_in_place_at_once_is_read_again() {
        // Same inode, same size, and most likely the same modification
        // time, to the file system's clock.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = token_file(&path);
        for token in ["aaaa", "bbbb", "cccc"] {
            std::fs::write(&path, token).unwrap();
            assert_eq!(source().as_deref(), Some(token));
        }
    }

    #[test]
    fn an_empty_or_missing_file_keeps_the_last_good_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let source = token_file(&file);
        assert_eq!(source(), None, "nothing read yet");
        std::fs::write(&file, "good").unwrap();
        assert_eq!(source().as_deref(), Some("good"));
        std::fs::write(&file, " \n").unwrap();
        assert_eq!(source().as_deref(), Some("good"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(source().as_deref(), Some("good"));
        std::fs::write(&file, "next").unwrap();
        assert_eq!(source().as_deref(), Some("next"));
    }
}
