//! History: what the hash chain and the signed checkpoint add to an
//! activation's transaction, measured as whole durable transactions on the
//! server's SQLite settings (`journal_mode=WAL`, `synchronous=FULL`) in the
//! same run and directory, statements prepared once as the server's
//! statement cache does. Both transactions take the next revision, move a
//! pointer and insert its event; the chained one also reads the chain's
//! head and links the event with policyhub's own `chain::link`, then signs
//! a checkpoint of the new head with policyhub's own Ed25519 key and
//! inserts it, as every revision's transaction does. The server's other
//! work is the same with and without, so this is the whole difference; the
//! section also states it against a whole `Activate` call of the real
//! server, measured in the same run. A third transaction adds the log's
//! Merkle tree on top of the chain: the event's leaf and the subtree hashes
//! it completes (policyhub's own `log` functions over the stored hashes it
//! reads), and the checkpoint's signed note of the new root; the rows set
//! it against the chain alone, as the server was before the tree.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::Utc;
use std::collections::HashMap;

use policyhub::domain::log::{self, Reads};
use policyhub::domain::{EventKind, EventRecord, chain};
use policyhub::signing::{CheckpointClaims, SigningKey};

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{NAMESPACE, Options, POLICY, Policyhub, activation_rate},
};

/// The most the chain and checkpoint may cost: 1.1× the transaction
/// without them, as a floor on the rate ratio.
const RATE_FLOOR: f64 = 1.0 / 1.1;

const SCHEMA: &str = "
    CREATE TABLE revision_counter (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL);
    INSERT INTO revision_counter VALUES (1, 0);
    CREATE TABLE policies (id INTEGER PRIMARY KEY, active_version INTEGER, active_revision INTEGER);
    INSERT INTO policies VALUES (1, 1, 0);
    CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, namespace TEXT, name TEXT,
        actor TEXT NOT NULL, at TEXT NOT NULL, reason TEXT NOT NULL, request_id TEXT NOT NULL,
        previous_version INTEGER, new_version INTEGER, revision INTEGER, hash TEXT);
    CREATE TABLE checkpoints (id INTEGER PRIMARY KEY, revision INTEGER NOT NULL,
        last_event_id INTEGER NOT NULL, chain_head TEXT NOT NULL, at TEXT NOT NULL,
        key_id TEXT NOT NULL, jws TEXT NOT NULL);
    ALTER TABLE checkpoints ADD COLUMN tree_size INTEGER;
    ALTER TABLE checkpoints ADD COLUMN root_hash TEXT;
    ALTER TABLE checkpoints ADD COLUMN note TEXT;
    CREATE TABLE log_hashes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL, event_id INTEGER);
    CREATE UNIQUE INDEX log_hashes_event_id ON log_hashes (event_id);
    CREATE INDEX checkpoints_revision ON checkpoints (revision);
    CREATE INDEX checkpoints_at ON checkpoints (at);
";

/// What an activation's transaction keeps of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// The revision, the pointer and the event.
    Plain,
    /// And the chain and a signed checkpoint.
    Chain,
    /// And the Merkle tree, the checkpoint signing its root in a note.
    Tree,
}

/// The origin of the benchmark's log.
const ORIGIN: &str = "bench.example/log";

/// `compute` over the stored hashes it reads from `log_hashes`.
fn over_tree<T>(
    connection: &rusqlite::Connection,
    compute: impl Fn(&Reads) -> policyhub::domain::Result<T>,
) -> anyhow::Result<T> {
    let mut known = HashMap::new();
    for index in Reads::needed(&compute) {
        let hash: Vec<u8> = connection
            .prepare_cached("SELECT hash FROM log_hashes WHERE id = ?1")?
            .query_row([index as i64], |row| row.get(0))?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| anyhow::anyhow!("a stored hash is not 32 bytes"))?;
        known.insert(index, log::Hash(hash));
    }
    Ok(Reads::with(known, compute)?)
}

/// How many leaves the tree has.
fn tree_size(connection: &rusqlite::Connection) -> anyhow::Result<u64> {
    let last: Option<i64> = connection
        .prepare_cached(
            "SELECT id FROM log_hashes WHERE event_id IS NOT NULL ORDER BY id DESC LIMIT 1",
        )?
        .query_row([], |row| row.get(0))
        .ok();
    Ok(last.map_or(0, |position| log::size_after_leaf_at(position as u64)))
}

/// Activation transactions per second for `duration` in a new database in
/// `dir`, keeping `history`.
fn activations(dir: &Path, history: History, duration: Duration) -> anyhow::Result<f64> {
    let chained = history != History::Plain;
    let path = dir.join(format!("history-{history:?}-{}.db", std::process::id()));
    let connection = rusqlite::Connection::open(&path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.execute_batch(SCHEMA)?;
    let (key, _) = SigningKey::generate()?;
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        let revision: i64 = connection
            .prepare_cached(
                "UPDATE revision_counter SET revision = revision + 1 WHERE id = 1 \
                 RETURNING revision",
            )?
            .query_row([], |row| row.get(0))?;
        let version = 1 + revision % 2;
        connection
            .prepare_cached(
                "UPDATE policies SET active_version = ?1, active_revision = ?2 WHERE id = 1",
            )?
            .execute((version, revision))?;
        let mut event = EventRecord {
            id: 0,
            kind: EventKind::Activated,
            policy: Some(("bench".into(), "limits".into())),
            actor: "bench".into(),
            at: Utc::now(),
            reason: "benchmark activation".into(),
            request_id: format!("r-{revision}"),
            previous_version: Some(3 - version as u32),
            new_version: Some(version as u32),
            revision: Some(revision as u64),
            key_id: None,
            rollout_id: None,
            hash: String::new(),
        };
        let mut leaf_bytes = None;
        if chained {
            let head: Option<String> = connection
                .prepare_cached("SELECT hash FROM events ORDER BY id DESC LIMIT 1")?
                .query_row([], |row| row.get(0))
                .ok();
            let canonical = chain::canonical(head.as_deref().unwrap_or(chain::GENESIS), &event);
            event.hash = chain::hash(&canonical);
            leaf_bytes = (history == History::Tree).then_some(canonical);
        }
        let last: i64 = connection
            .prepare_cached(
                "INSERT INTO events (kind, namespace, name, actor, at, reason, request_id, \
                 previous_version, new_version, revision, hash) \
                 VALUES ('ACTIVATED', 'bench', 'limits', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 RETURNING id",
            )?
            .query_row(
                (
                    &event.actor,
                    event.at.to_rfc3339(),
                    &event.reason,
                    &event.request_id,
                    3 - version,
                    version,
                    revision,
                    &event.hash,
                ),
                |row| row.get(0),
            )?;
        let mut note = None;
        if let Some(canonical) = leaf_bytes {
            let index = tree_size(&connection)?;
            let leaf = log::leaf_hash(canonical.as_bytes());
            let hashes = over_tree(&connection, |reads| log::appended(index, leaf, reads))?;
            let first = log::leaf_position(index);
            for (offset, hash) in hashes.iter().enumerate() {
                connection
                    .prepare_cached(
                        "INSERT INTO log_hashes (id, hash, event_id) VALUES (?1, ?2, ?3)",
                    )?
                    .execute((
                        (first + offset as u64) as i64,
                        hash.0.to_vec(),
                        (offset == 0).then_some(last),
                    ))?;
            }
            let size = index + 1;
            let root = over_tree(&connection, |reads| log::root(size, reads))?;
            let body = log::checkpoint_body(ORIGIN, size, root)?;
            note = Some((size, log::encode_hash(&root), key.sign_note(ORIGIN, &body)?));
        }
        if chained {
            let claims =
                CheckpointClaims::new(revision as u64, last as u64, event.hash, Utc::now());
            let jws = key.sign_checkpoint(&claims)?;
            let (tree_size, root_hash, note) = match note {
                Some((size, root, note)) => (Some(size as i64), Some(root), Some(note)),
                None => (None, None, None),
            };
            connection
                .prepare_cached(
                    "INSERT INTO checkpoints (revision, last_event_id, chain_head, at, key_id, \
                     jws, tree_size, root_hash, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?
                .execute((
                    revision,
                    last,
                    &claims.chain_head,
                    &claims.time,
                    key.key_id(),
                    &jws,
                    tree_size,
                    root_hash,
                    note,
                ))?;
        }
        connection.execute_batch("COMMIT")?;
        done += 1;
    }
    let elapsed = start.elapsed();
    drop(connection);
    crate::sqlite::remove_database(&path);
    Ok(done as f64 / elapsed.as_secs_f64())
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let mut policyhub = Policyhub::start(Options::default()).await?;
    policyhub.publish_policy(POLICY, 2, 0).await?;
    let target = [(NAMESPACE.to_owned(), POLICY.to_owned())];
    let dir = policyhub.data_dir.clone();
    // Warm up: the first commits of a fresh WAL file cost more.
    activation_rate(&policyhub, &target, Duration::from_millis(300)).await?;
    let (mut tree, mut with, mut without, mut calls, mut calls_chain, mut calls_without) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for repeat in 1..=settings.repeats {
        let path = dir.clone();
        let (treed, chained, plain) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((
                activations(&path, History::Tree, duration)?,
                activations(&path, History::Chain, duration)?,
                activations(&path, History::Plain, duration)?,
            ))
        })
        .await??;
        // The real server keeps the tree: its Activate, less what the tree
        // adds, is the Activate of the chain alone; less what the chain
        // and checkpoint add too, the Activate without them.
        let activate = activation_rate(&policyhub, &target, duration).await?;
        let tree_cost = 1.0 / treed - 1.0 / chained;
        let chain_cost = 1.0 / chained - 1.0 / plain;
        let activate_chain = 1.0 / (1.0 / activate - tree_cost);
        let activate_without = 1.0 / (1.0 / activate_chain - chain_cost);
        println!(
            "  repeat {repeat}: {treed:.0}/s with the tree, {chained:.0}/s with the chain and a \
             checkpoint, {plain:.0}/s without; Activate {activate:.0}/s, {:.0} µs of it the \
             tree, {:.0} µs the chain and checkpoint",
            tree_cost * 1e6,
            chain_cost * 1e6
        );
        tree.push(treed);
        with.push(chained);
        without.push(plain);
        calls.push(activate);
        calls_chain.push(activate_chain);
        calls_without.push(activate_without);
    }
    Ok(Outcome {
        rows: vec![
            Row::new(
                "activation transactions/s on SQLite with the chain and a signed checkpoint",
                Unit::PerSecond,
                with.clone(),
                "the same transactions without them (revision, pointer, event), same directory",
                without,
            ),
            Row::new(
                "activation transactions/s on SQLite with the Merkle tree and a checkpoint signing its root",
                Unit::PerSecond,
                tree,
                "the same transactions with the chain and checkpoint alone, same directory",
                with,
            ),
            Row::new(
                "Activate calls/s on SQLite, the tree, chain and checkpoint included",
                Unit::PerSecond,
                calls.clone(),
                "the same calls less the time the chain and checkpoint add",
                calls_without,
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
            Row::new(
                "Activate calls/s on SQLite with the tree and a checkpoint per activation",
                Unit::PerSecond,
                calls,
                "the same calls less the time the tree adds: the chain of before",
                calls_chain,
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
        ],
        notes: vec![format!(
            "{} s per run, WAL with synchronous=FULL: each transaction ends in one fsync either way",
            duration.as_secs()
        )],
    })
}
