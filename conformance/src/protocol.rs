//! The test-service protocol: how the kit speaks to the runtime under test.
//!
//! A test service is a small HTTP/JSON server written beside a runtime
//! implementation, in its language. It turns the kit's requests into that
//! runtime's calls and tells what the runtime did:
//!
//! - `GET /`: the implementation's name and [`Capabilities`].
//! - `POST /runtimes` with [`RuntimeSettings`]: start one runtime; `201`
//!   with `Location: /runtimes/{id}`.
//! - `GET /runtimes/{id}`: what it did so far, a [`RuntimeView`].
//! - `DELETE /runtimes/{id}`: stop it (its cache stays); `204`.
//!
//! A runtime started again with the same `cacheDir` is a restart from the
//! cache. The book's page for SDK authors says the same in prose.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an implementation can do beyond the core; a test that needs a
/// capability an implementation does not declare is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Keeps the last good state in `cacheDir` and starts from it.
    Cache,
    /// Reports APPLIED and REJECTED under `runtimeId` to the fleet view.
    Reports,
    /// Verifies the server's signed checkpoints: refuses a history wound
    /// back or forked, takes a declared restore once, reports a stale
    /// checkpoint.
    History,
    /// Requires K of N witness cosignatures on a checkpoint.
    Witnesses,
    /// Takes several server addresses and moves between them.
    Endpoints,
    /// Holds a thousand runtimes in one test service (the reconnect storm).
    Fleet,
    /// Follows the revocation of a signing key: refuses what a revoked key
    /// signs.
    Revocation,
}

/// `GET /`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// The implementation, as the report names it.
    pub name: String,
    /// What it declares it can do.
    pub capabilities: Vec<Capability>,
}

/// `POST /runtimes`: one runtime to start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuntimeSettings {
    /// The server's gRPC addresses (`http://host:port`); more than one only
    /// for an implementation with [`Capability::Endpoints`].
    pub endpoints: Vec<String>,
    /// The namespace followed.
    pub namespace: String,
    /// Only these policies; empty: every policy of the namespace.
    pub names: Vec<String>,
    /// The runtime's id in the fleet view; `None`: it does not report.
    pub runtime_id: Option<String>,
    /// Where the last good state is kept; `None`: no cache.
    pub cache_dir: Option<String>,
    /// The heartbeat interval to expect of the server, in milliseconds.
    pub heartbeat_interval_ms: Option<u64>,
    /// Reconnection backoff: the first bound and the largest, in
    /// milliseconds.
    pub backoff: Option<Backoff>,
    /// With several endpoints: how long, at most, a runtime away from the
    /// address it prefers waits before trying that one again, in
    /// milliseconds; `None`: the implementation's default.
    pub rebalance_interval_ms: Option<u64>,
    /// How old the server's newest checkpoint may be, in milliseconds;
    /// `None`: the implementation's default.
    pub max_checkpoint_age_ms: Option<u64>,
    /// Witness verifier keys and how many must cosign.
    pub witnesses: Option<Witnesses>,
    /// A file holding the PEM certificate of the CA that signed the
    /// server's: what an `https://` endpoint's certificate is verified
    /// against. An `http://` endpoint stays plaintext, given one or not.
    pub ca_file: Option<String>,
    /// A file holding the bearer token of every call, read again when it
    /// changes (a rotated token is taken without a restart).
    pub token_file: Option<String>,
}

/// Reconnection delays.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// The bound of the first delay.
    pub initial_ms: u64,
    /// The largest bound.
    pub max_ms: u64,
}

/// K of N witnesses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Witnesses {
    /// Verifier keys, `<name>+<key id>+<base64 key>`.
    pub keys: Vec<String>,
    /// How many must have cosigned a checkpoint.
    pub required: usize,
}

/// `POST /runtimes`' answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    /// The runtime's id in the test service.
    pub id: String,
}

/// `GET /runtimes/{id}`: what a runtime did, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuntimeView {
    /// The state in force; `None` before the first one.
    pub in_force: Option<StateView>,
    /// Everything it decided or noticed, oldest first.
    pub events: Vec<RuntimeEvent>,
}

/// A whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    /// Everything up to this revision is in it.
    pub revision: u64,
    /// `server`, or `cache` while read back from the cache.
    pub source: Source,
    /// The policies in it by name.
    pub policies: BTreeMap<String, PolicyView>,
}

/// Where a state in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Received from the server.
    Server,
    /// Read back from the cache.
    Cache,
}

/// One policy of a state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// Its version.
    pub version: u32,
    /// `sha256:` digest of its body's canonical JSON.
    pub digest: String,
    /// The policy document.
    pub body: serde_json::Value,
}

/// What a runtime did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RuntimeEvent {
    /// A stream to the server opened.
    Connected {
        /// The address it opened to.
        endpoint: String,
    },
    /// The stream was lost.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A state was put in force (from the server, or from the cache at
    /// start): the policies in it, by name, with their versions.
    Applied {
        /// Its revision.
        revision: u64,
        /// Server or cache.
        source: Source,
        /// Versions by policy name.
        policies: BTreeMap<String, u32>,
    },
    /// A state was refused; the one before stays in force.
    Rejected {
        /// The refused revision (0 when not known).
        revision: u64,
        /// Why.
        reason: String,
    },
    /// The server showed a history that does not extend the one verified.
    HistoryRefused {
        /// Why.
        reason: String,
    },
    /// A restore the server's operator declared was taken.
    HistoryRestored {
        /// The operator's reason.
        reason: String,
    },
    /// The server's newest checkpoint grew older than allowed.
    CheckpointStale,
    /// A current checkpoint arrived after a stale one.
    CheckpointFresh,
}

impl RuntimeView {
    /// The `Applied` events: revision, source, versions.
    pub fn applied(&self) -> Vec<(u64, Source, &BTreeMap<String, u32>)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                RuntimeEvent::Applied {
                    revision,
                    source,
                    policies,
                } => Some((*revision, *source, policies)),
                _ => None,
            })
            .collect()
    }

    /// The revision in force, 0 before any.
    pub fn revision(&self) -> u64 {
        self.in_force.as_ref().map_or(0, |state| state.revision)
    }

    /// Whether an event matches.
    pub fn saw(&self, matches: impl Fn(&RuntimeEvent) -> bool) -> bool {
        self.events.iter().any(matches)
    }
}

/// Serves a test service's `app` on `listen` (port 0: a free one),
/// printing its address (`http://host:port`) on standard output once it
/// listens, as the kit's scripts read it.
pub async fn serve(listen: std::net::SocketAddr, app: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
