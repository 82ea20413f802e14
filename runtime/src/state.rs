//! Whole states, and how watch messages build them.
//!
//! The server may split a revision into parts (`complete = false` on all
//! but the last). [`Assembler`] gathers them; only a complete revision
//! becomes a candidate state, so the application never sees half of an
//! atomic release.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::Value;

use crate::proto::{Bundle, WatchActiveResponse, WatchEventKind};

/// A bundle whose signature, digest and subject were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedBundle {
    /// Policy name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// Release label, if any.
    pub label: Option<String>,
    /// `sha256:` digest of the body's canonical JSON.
    pub digest: String,
    /// Revision at which this version became active.
    pub revision: u64,
    /// Key that signed it.
    pub key_id: String,
    /// The policy document, from the verified payload.
    pub body: Value,
    /// The signed bundle itself, for caching or passing on.
    pub jws: String,
}

/// Where a state came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// Received from the server.
    #[default]
    Server,
    /// Read back from the last-known-good cache (re-verified) because the
    /// server has not been reached yet.
    Cache,
}

/// The complete active set of a namespace (or of the selected policies) at
/// one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// The namespace.
    pub namespace: String,
    /// Everything up to this revision is in the state.
    pub revision: u64,
    /// Active bundles by policy name.
    pub bundles: BTreeMap<String, VerifiedBundle>,
    /// Server or cache.
    pub source: Source,
    /// When the server's state was verified and accepted: kept through the
    /// cache, so a state read back from it is as old as it was when saved
    /// plus the time since.
    pub verified_at: SystemTime,
}

impl Default for State {
    fn default() -> Self {
        State {
            namespace: String::new(),
            revision: 0,
            bundles: BTreeMap::new(),
            source: Source::default(),
            verified_at: SystemTime::UNIX_EPOCH,
        }
    }
}

/// A whole revision, assembled from its parts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Revision {
    /// Snapshot, update or progress.
    pub kind: WatchEventKind,
    /// The revision.
    pub revision: u64,
    /// The server is behind the client (a restored database).
    pub reset: bool,
    /// Every bundle of every part.
    pub bundles: Vec<Bundle>,
}

/// Gathers the parts of one revision.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    pending: Option<Revision>,
}

impl Assembler {
    /// Adds a message; the whole revision once its last part arrived. A
    /// part that does not continue the pending revision is a protocol error.
    pub fn push(&mut self, message: WatchActiveResponse) -> Result<Option<Revision>, String> {
        let kind = message.kind();
        let part = match self.pending.take() {
            None => Revision {
                kind,
                revision: message.revision,
                reset: message.reset,
                bundles: message.bundles,
            },
            Some(mut pending) => {
                if pending.kind != kind || pending.revision != message.revision {
                    return Err(format!(
                        "a part of revision {} ({:?}) interrupted revision {} ({:?})",
                        message.revision, kind, pending.revision, pending.kind
                    ));
                }
                pending.bundles.extend(message.bundles);
                pending
            }
        };
        if message.complete {
            Ok(Some(part))
        } else {
            self.pending = Some(part);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(revision: u64, names: &[&str], complete: bool) -> WatchActiveResponse {
        WatchActiveResponse {
            kind: WatchEventKind::Snapshot as i32,
            revision,
            reset: false,
            bundles: names
                .iter()
                .map(|name| Bundle {
                    name: name.to_string(),
                    ..Bundle::default()
                })
                .collect(),
            complete,
            checkpoint: None,
        }
    }

    #[test]
    fn parts_become_one_revision_only_when_complete() {
        let mut assembler = Assembler::default();
        assert_eq!(assembler.push(part(4, &["a", "b"], false)), Ok(None));
        assert_eq!(assembler.push(part(4, &["c"], false)), Ok(None));
        let whole = assembler.push(part(4, &["d"], true)).unwrap().unwrap();
        let names: Vec<&str> = whole.bundles.iter().map(|b| b.name.as_str()).collect();
        assert_eq!((whole.revision, names), (4, vec!["a", "b", "c", "d"]));
        assert!(assembler.push(part(5, &["a"], false)).unwrap().is_none());
        assert!(assembler.push(part(6, &["a"], true)).is_err());
    }
}
