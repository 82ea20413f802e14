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
//! server, measured in the same run.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::Utc;
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
    CREATE INDEX checkpoints_revision ON checkpoints (revision);
    CREATE INDEX checkpoints_at ON checkpoints (at);
";

/// Activation transactions per second for `duration` in a new database in
/// `dir`, with or without the chain and checkpoint.
fn activations(dir: &Path, chained: bool, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join(format!("history-{chained}-{}.db", std::process::id()));
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
        if chained {
            let head: Option<String> = connection
                .prepare_cached("SELECT hash FROM events ORDER BY id DESC LIMIT 1")?
                .query_row([], |row| row.get(0))
                .ok();
            event.hash = chain::link(head.as_deref().unwrap_or(chain::GENESIS), &event);
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
        if chained {
            let claims =
                CheckpointClaims::new(revision as u64, last as u64, event.hash, Utc::now());
            let jws = key.sign_checkpoint(&claims)?;
            connection
                .prepare_cached(
                    "INSERT INTO checkpoints (revision, last_event_id, chain_head, at, key_id, \
                     jws) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute((
                    revision,
                    last,
                    &claims.chain_head,
                    &claims.time,
                    key.key_id(),
                    &jws,
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
    let (mut with, mut without, mut calls, mut calls_without) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let path = dir.clone();
        let (chained, plain) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            Ok((
                activations(&path, true, duration)?,
                activations(&path, false, duration)?,
            ))
        })
        .await??;
        let activate = activation_rate(&policyhub, &target, duration).await?;
        // The same call less what the chain and checkpoint added above.
        let cost = 1.0 / chained - 1.0 / plain;
        let activate_without = 1.0 / (1.0 / activate - cost);
        println!(
            "  repeat {repeat}: {chained:.0}/s with the chain and a checkpoint, {plain:.0}/s \
             without; Activate {activate:.0}/s, {:.0} µs of it the chain and checkpoint",
            cost * 1e6
        );
        with.push(chained);
        without.push(plain);
        calls.push(activate);
        calls_without.push(activate_without);
    }
    Ok(Outcome {
        rows: vec![
            Row::new(
                "activation transactions/s on SQLite with the chain and a signed checkpoint",
                Unit::PerSecond,
                with,
                "the same transactions without them (revision, pointer, event), same directory",
                without,
            ),
            Row::new(
                "Activate calls/s on SQLite, the chain and checkpoint included",
                Unit::PerSecond,
                calls,
                "the same calls less the time the row above adds",
                calls_without,
            )
            .target(Target::RatioAtLeast(RATE_FLOOR)),
        ],
        notes: vec![format!(
            "{} s per run, WAL with synchronous=FULL: each transaction ends in one fsync either way",
            duration.as_secs()
        )],
    })
}
