//! The hash chain over the event log: each event stores the SHA-256 of its
//! canonical form, which holds the hash of the event before it, so changing,
//! removing or reordering any event breaks every link after it.
//!
//! The canonical form is the RFC 8785 JSON of one object with exactly these
//! members: `actor`, `at` (RFC 3339, UTC, six fractional digits), `keyId`,
//! `kind` (such as `ACTIVATED`), `name`, `namespace`, `newVersion`,
//! `previous` (the hash of the event before, `""` for the first),
//! `previousVersion`, `reason`, `requestId`, `revision`, `rolloutId`; absent
//! values are `""` or `0`, as in the API. The hash is `sha256:` and the
//! lowercase hex of its SHA-256. The id is not covered: the chain's order is
//! the order of ids.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::{EventRecord, canonical_json};

/// A signed checkpoint of the chain, as stored: the JWS (whose payload is
/// `policyhub_runtime::checkpoint::CheckpointClaims`) and what it states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its place among checkpoints.
    pub id: u64,
    /// The revision in force.
    pub revision: u64,
    /// The newest event (0: none).
    pub last_event_id: u64,
    /// That event's hash.
    pub chain_head: String,
    /// When it was signed.
    pub at: DateTime<Utc>,
    /// The key that signed it.
    pub key_id: String,
    /// The compact JWS.
    pub jws: String,
    /// The C2SP signed note of the log's Merkle tree it signs too (none on
    /// checkpoints from before the tree), followed, as read back, by the
    /// lines of the witnesses' cosignatures gathered.
    pub note: Option<String>,
}

/// The `previous` of the first event.
pub const GENESIS: &str = "";

/// The hash of `event` following the event whose hash is `previous`.
pub fn link(previous: &str, event: &EventRecord) -> String {
    hash(&canonical(previous, event))
}

/// The hash of an event's canonical form.
pub fn hash(canonical: &str) -> String {
    super::Digest::of_canonical(canonical.as_bytes()).to_string()
}

/// The canonical form of `event` following the event whose hash is
/// `previous`: what its link hashes, and its leaf in the log's Merkle tree.
pub fn canonical(previous: &str, event: &EventRecord) -> String {
    let (namespace, name) = event
        .policy
        .as_ref()
        .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
        .unwrap_or_default();
    canonical_json(&json!({
        "actor": event.actor,
        "at": event.at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "keyId": event.key_id.as_deref().unwrap_or_default(),
        "kind": event.kind.as_str(),
        "name": name,
        "namespace": namespace,
        "newVersion": event.new_version.unwrap_or(0),
        "previous": previous,
        "previousVersion": event.previous_version.unwrap_or(0),
        "reason": event.reason,
        "requestId": event.request_id,
        "revision": event.revision.unwrap_or(0),
        "rolloutId": event.rollout_id.as_deref().unwrap_or_default(),
    }))
}

/// Where the chain breaks: the first event whose stored hash is not the
/// link from the event before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The event.
    pub id: u64,
    /// The id of the event before it in the log as read, if any.
    pub after: Option<u64>,
    /// Its stored hash.
    pub stored: String,
    /// The hash it should have.
    pub computed: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let after = match self.after {
            Some(id) => format!("event {id}"),
            None => "the start of the log".into(),
        };
        write!(
            f,
            "event {} does not follow {after}: its hash is {:?}, the chain gives {} (it was \
             changed, or an event before it was changed, removed or moved)",
            self.id, self.stored, self.computed
        )
    }
}

/// Verifies `events`, in id order, from the start of the log; the head of
/// the chain and how many events it covers, or the first broken link.
pub fn verify(events: &[EventRecord]) -> Result<(String, usize), Broken> {
    let head = verify_after(GENESIS, None, events)?;
    Ok((head, events.len()))
}

/// Verifies `events`, in id order, as the links that follow the event
/// `after` whose hash is `previous`; the head they reach, or the first
/// broken link.
fn verify_after(
    previous: &str,
    after: Option<u64>,
    events: &[EventRecord],
) -> Result<String, Broken> {
    let mut previous = previous.to_owned();
    let mut after = after;
    for event in events {
        let computed = link(&previous, event);
        if computed != event.hash {
            return Err(Broken {
                id: event.id,
                after,
                stored: event.hash.clone(),
                computed,
            });
        }
        previous = computed;
        after = Some(event.id);
    }
    Ok(previous)
}

/// Whether the log from a signed checkpoint on extends it: `events` is the
/// log in id order from the checkpoint's last event (included; every event
/// for a checkpoint of the empty log), `before` the id and stored hash of
/// the event before them. Only the events since the checkpoint are read,
/// so the check stays as short as the log written since. The head the log
/// reaches, or why it does not extend the checkpoint: its last event gone,
/// rewritten (its hash no longer the signed head), or a later link broken.
pub fn extends(
    checkpoint: &Checkpoint,
    before: (u64, &str),
    events: &[EventRecord],
) -> Result<String, String> {
    let signed_last = checkpoint.last_event_id;
    let stored_head = match events.first() {
        _ if signed_last == 0 => before.1,
        Some(first) if first.id == signed_last => first.hash.as_str(),
        _ => return Err(format!("its last event {signed_last} is not in the log")),
    };
    if stored_head != checkpoint.chain_head {
        return Err(format!(
            "it states chain head {:?} at event {signed_last}, the log has {stored_head:?}",
            checkpoint.chain_head
        ));
    }
    verify_after(before.1, (before.0 > 0).then_some(before.0), events)
        .map_err(|broken| broken.to_string())
}

/// Whether the log confirms what a signed checkpoint states: `events` is
/// the verified log in id order; the checkpoint's chain head must be the
/// hash of its last event there, and its revision the newest any event up
/// to it took. A checkpoint whose last event is missing reveals a log cut
/// short, which the chain alone cannot.
pub fn confirms(
    events: &[EventRecord],
    claims: &policyhub_runtime::checkpoint::CheckpointClaims,
) -> Result<(), String> {
    let upto = &events[..events.partition_point(|event| event.id <= claims.last_event_id)];
    let head = match upto.last() {
        _ if claims.last_event_id == 0 => GENESIS,
        Some(event) if event.id == claims.last_event_id => event.hash.as_str(),
        _ => {
            return Err(format!(
                "its last event {} is not in the log",
                claims.last_event_id
            ));
        }
    };
    if head != claims.chain_head {
        return Err(format!(
            "it states chain head {:?} at event {}, the log has {head:?}",
            claims.chain_head, claims.last_event_id
        ));
    }
    let revision = upto
        .iter()
        .filter_map(|event| event.revision)
        .max()
        .unwrap_or(0);
    if revision != claims.revision {
        return Err(format!(
            "it states revision {}, the log up to event {} reaches revision {revision}",
            claims.revision, claims.last_event_id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::domain::EventKind;

    fn event(id: u64, reason: &str) -> EventRecord {
        EventRecord {
            id,
            kind: EventKind::Activated,
            policy: Some(("payments".into(), "limits".into())),
            actor: "alice".into(),
            at: Utc.with_ymd_and_hms(2026, 11, 23, 19, 41, 47).unwrap(),
            reason: reason.into(),
            request_id: "r-1".into(),
            previous_version: Some(1),
            new_version: Some(2),
            revision: Some(id),
            key_id: None,
            rollout_id: None,
            hash: String::new(),
        }
    }

    fn chained(count: u64) -> Vec<EventRecord> {
        let mut previous = GENESIS.to_owned();
        (1..=count)
            .map(|id| {
                let mut event = event(id, &format!("change {id}"));
                event.hash = link(&previous, &event);
                previous = event.hash.clone();
                event
            })
            .collect()
    }

    #[test]
    fn the_canonical_form_is_the_documented_one() {
        // The same bytes an independent verifier builds from the API's JSON.
        let expected = canonical_json(&json!({
            "actor": "alice", "at": "2026-11-23T19:41:47.000000Z", "keyId": "", "kind": "ACTIVATED",
            "name": "limits", "namespace": "payments", "newVersion": 2, "previous": "",
            "previousVersion": 1, "reason": "why", "requestId": "r-1", "revision": 7, "rolloutId": "",
        }));
        let hash = crate::domain::Digest::of_canonical(expected.as_bytes()).to_string();
        assert_eq!(link(GENESIS, &event(7, "why")), hash);
    }

    fn checkpoint_at(log: &[EventRecord], last_event_id: u64) -> Checkpoint {
        Checkpoint {
            id: 1,
            revision: last_event_id,
            last_event_id,
            chain_head: log[last_event_id as usize - 1].hash.clone(),
            at: Utc.with_ymd_and_hms(2026, 11, 23, 19, 41, 48).unwrap(),
            key_id: "k".into(),
            jws: String::new(),
            note: None,
        }
    }

    #[test]
    fn only_a_log_that_extends_the_signed_checkpoint_passes() {
        let log = chained(5);
        let checkpoint = checkpoint_at(&log, 3);
        let before = (2, log[1].hash.as_str());
        assert_eq!(
            extends(&checkpoint, before, &log[2..]),
            Ok(log[4].hash.clone())
        );

        let mut rewritten = log.clone();
        rewritten[2].reason = "rewritten".into();
        let why = extends(&checkpoint, before, &rewritten[2..]).unwrap_err();
        assert!(why.starts_with("event 3 does not follow event 2"), "{why}");

        let mut resealed = rewritten;
        resealed[2].hash = link(&log[1].hash, &resealed[2]);
        let why = extends(&checkpoint, before, &resealed[2..]).unwrap_err();
        assert!(why.starts_with("it states chain head"), "{why}");

        let why = extends(&checkpoint, before, &log[3..]).unwrap_err();
        assert_eq!(why, "its last event 3 is not in the log");

        let mut later = log.clone();
        later[4].reason = "rewritten".into();
        let why = extends(&checkpoint, before, &later[2..]).unwrap_err();
        assert!(why.starts_with("event 5 does not follow event 4"), "{why}");
    }

    #[test]
    fn an_untouched_log_verifies_and_any_change_names_the_first_broken_event() {
        let log = chained(5);
        assert_eq!(verify(&log).unwrap(), (log[4].hash.clone(), 5));

        let mut changed = log.clone();
        changed[2].reason = "rewritten".into();
        assert_eq!(verify(&changed).unwrap_err().id, 3);

        let mut removed = log.clone();
        removed.remove(1);
        let broken = verify(&removed).unwrap_err();
        assert_eq!((broken.id, broken.after), (3, Some(1)));

        let mut reordered = log.clone();
        reordered.swap(2, 3);
        assert_eq!(verify(&reordered).unwrap_err().id, 4);

        let mut first_removed = log;
        first_removed.remove(0);
        assert_eq!(verify(&first_removed).unwrap_err().after, None);
    }
}
