//! A bearer token read from a file, as a workload holds one: Kubernetes
//! projects a ServiceAccount token into a file and replaces it (an atomic
//! swap of a symlink) about every hour, well before it expires. The file is
//! read again on every call, so the next call and the next stream carry the
//! new token while an open stream stays open; a file that cannot be read or
//! is empty mid-rotation keeps the last good token, and says so once.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use crate::subscription::TokenSource;

/// The token `path` holds (trimmed), read again on every call; the last
/// good one while the file cannot be read or is empty, none before a first
/// good read.
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
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        file.read(&path);
        file.token.clone()
    })
}

/// What the file gave last, and whether it fails now (so a failure is
/// logged once, not on every call).
#[derive(Default)]
struct TokenFile {
    token: Option<String>,
    failing: bool,
}

impl TokenFile {
    fn read(&mut self, path: &Path) {
        let read = std::fs::read_to_string(path)
            .map_err(|error| error.to_string())
            .and_then(|text| match text.trim() {
                "" => Err("it is empty".to_owned()),
                token => Ok(token.to_owned()),
            });
        match read {
            Ok(token) => {
                if self.failing {
                    tracing::info!(file = %path.display(), "the token file is readable again");
                } else if self.token.as_ref().is_some_and(|last| *last != token) {
                    tracing::info!(
                        file = %path.display(),
                        "the token file holds a new token; the next call carries it"
                    );
                }
                self.token = Some(token);
                self.failing = false;
            }
            Err(reason) => {
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
