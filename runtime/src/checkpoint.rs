//! Signed checkpoints: the server's word, under the key that signs
//! bundles, that at `time` its event log's hash chain ended at `chainHead`,
//! the event `lastEventId`, with revision `revision` in force.
//!
//! ```text
//! header  {"alg":"EdDSA","kid":"<RFC 7638 thumbprint>","typ":"policyhub-checkpoint+jwt"}
//! payload {"revision","lastEventId","chainHead","time"}
//! ```
//!
//! A server signs one at every revision and at least every
//! `audit.checkpoint_interval`, and stores it in its database before it
//! serves it. A replica that can no longer reach its database serves an
//! ever older checkpoint, which is how a runtime tells it from a current
//! one ([`crate::Subscription::max_checkpoint_age`]).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::bundle::{Jwks, VerifyError, verify_signature};

/// The JWS `typ` header of every checkpoint.
pub const CHECKPOINT_TYPE: &str = "policyhub-checkpoint+jwt";

/// What a checkpoint states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointClaims {
    /// The revision in force.
    pub revision: u64,
    /// The newest event of the log (0: none yet).
    pub last_event_id: u64,
    /// That event's hash: the head of the chain (`""`: none yet).
    pub chain_head: String,
    /// When it was signed: RFC 3339, UTC, six fractional digits.
    pub time: String,
}

impl CheckpointClaims {
    /// Claims stating `time` as the format writes it.
    pub fn new(revision: u64, last_event_id: u64, chain_head: String, time: DateTime<Utc>) -> Self {
        CheckpointClaims {
            revision,
            last_event_id,
            chain_head,
            time: time.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }

    /// The time it was signed.
    pub fn signed_at(&self) -> Result<DateTime<Utc>, VerifyError> {
        DateTime::parse_from_rfc3339(&self.time)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| VerifyError::Malformed(format!("time {:?}: {error}", self.time)))
    }
}

/// Verifies a checkpoint offline against a JWKS: header type, algorithm,
/// key, signature, and a readable time.
pub fn verify_checkpoint(jws: &str, jwks: &Jwks) -> Result<CheckpointClaims, VerifyError> {
    let claims: CheckpointClaims = verify_signature(jws, CHECKPOINT_TYPE, jwks)?;
    claims.signed_at()?;
    Ok(claims)
}

impl std::fmt::Display for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.newest, self.max_age) {
            (Some((claims, _)), Some(max_age)) if self.stale => write!(
                f,
                "the server's newest checkpoint (revision {}, signed {}) is older than {} ms: \
                 its replica may be cut off from its database",
                claims.revision,
                claims.time,
                max_age.as_millis()
            ),
            (Some((claims, _)), _) => write!(
                f,
                "checkpoint of revision {} signed {}",
                claims.revision, claims.time
            ),
            (None, _) => write!(f, "no checkpoint yet"),
        }
    }
}

/// What a subscription knows of the server's checkpoints: the newest one
/// verified, and whether it was found too old.
#[derive(Debug)]
pub(crate) struct Freshness {
    /// Off when `None`.
    max_age: Option<std::time::Duration>,
    newest: Option<(CheckpointClaims, DateTime<Utc>)>,
    /// The JWS of the newest, which every message repeats until the next.
    newest_jws: String,
    stale: bool,
}

impl Freshness {
    pub(crate) fn new(max_age: Option<std::time::Duration>) -> Self {
        Freshness {
            max_age,
            newest: None,
            newest_jws: String::new(),
            stale: false,
        }
    }

    fn age(signed_at: DateTime<Utc>) -> std::time::Duration {
        (Utc::now() - signed_at).to_std().unwrap_or_default()
    }

    /// Whether `jws` is the newest checkpoint, verified already.
    pub(crate) fn holds(&self, jws: &str) -> bool {
        !jws.is_empty() && self.newest_jws == jws
    }

    /// Takes a verified checkpoint (an older one than held changes
    /// nothing); the event when it ends a stale spell.
    pub(crate) fn observe(&mut self, claims: CheckpointClaims, jws: &str) -> Option<crate::Event> {
        let signed_at = claims.signed_at().ok()?;
        if self
            .newest
            .as_ref()
            .is_some_and(|(_, newest)| *newest >= signed_at)
        {
            return None;
        }
        let revision = claims.revision;
        self.newest = Some((claims, signed_at));
        jws.clone_into(&mut self.newest_jws);
        let fresh = self
            .max_age
            .is_none_or(|max_age| Self::age(signed_at) < max_age);
        if self.stale && fresh {
            self.stale = false;
            return Some(crate::Event::CheckpointFresh {
                revision,
                signed_at,
            });
        }
        None
    }

    /// When the newest checkpoint grows too old; `None` when the check is
    /// off, no checkpoint came yet, or it was found stale already.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        let max_age = self.max_age?;
        let (_, signed_at) = self.newest.as_ref().filter(|_| !self.stale)?;
        let left = max_age.saturating_sub(Self::age(*signed_at));
        Some(tokio::time::Instant::now() + left)
    }

    /// Waits for [`Self::deadline`]; forever when there is none.
    pub(crate) async fn expiry(&self) {
        match self.deadline() {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    }

    /// Marks the newest checkpoint stale: the event that says so.
    pub(crate) fn expire(&mut self) -> crate::Event {
        self.stale = true;
        let (claims, signed_at) = self
            .newest
            .as_ref()
            .expect("only a held checkpoint expires");
        crate::Event::CheckpointStale {
            revision: claims.revision,
            signed_at: *signed_at,
            age: Self::age(*signed_at),
        }
    }
}
