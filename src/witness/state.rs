//! What a witness remembers: per log (its origin), the last checkpoint it
//! cosigned. One JSON file, replaced whole (written beside, synced, then
//! renamed over), so a crash leaves the old record or the new one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// The last checkpoint cosigned for one log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cosigned {
    /// Its tree size.
    pub size: u64,
    /// Its root hash, base64.
    pub root: String,
    /// The checkpoint note as submitted, the evidence of what was cosigned.
    pub note: String,
}

/// Every log's last cosigned checkpoint, by origin.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub logs: BTreeMap<String, Cosigned>,
}

/// The state file.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: &Path) -> Self {
        StateFile {
            path: path.to_owned(),
        }
    }

    /// The record kept, empty when there is no file yet.
    pub fn load(&self) -> anyhow::Result<Record> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a witness's state", self.path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the record kept with `record`, durably.
    pub fn save(&self, record: &Record) -> anyhow::Result<()> {
        let mut next = self.path.clone().into_os_string();
        next.push(".next");
        let next = PathBuf::from(next);
        let mut file =
            std::fs::File::create(&next).with_context(|| format!("writing {}", next.display()))?;
        file.write_all(&serde_json::to_vec_pretty(record)?)?;
        file.sync_all()?;
        std::fs::rename(&next, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
