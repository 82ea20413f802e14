//! Start-up and history: what stored versions cost. A server is started on
//! a database holding 10^3, 10^4, 10^5 (and in full mode 10^6, when seeding
//! stays quick) versions of the benchmark policy:
//!
//! - start-up: from process start to the first SERVING answer of
//!   `Health/Check`, with 10^5 stored versions, against a migrated empty
//!   database; the two start in turn;
//! - GetActive, Activate and the first message of a new watch stream: the
//!   p50 of each at every size, against the server holding 10^3 versions,
//!   both running at once and measured in turn.
//!
//! Seeding through Draft and Publish would take minutes at 10^5, so the
//! real server publishes three signed versions (1 active), is stopped, and
//! the rest are inserted straight into its SQLite file: copies of version
//! 1's row as SUPERSEDED drafts (the state a draft replaced by a newer one
//! has: no signature, no label), numbered 4 and up, each with its
//! DRAFT_CREATED event, in one statement each that the schema's guards
//! accept. The events go in unsealed (no hash), as events written before
//! the hash chain are, and an untimed start of the server seals them into
//! the chain and the log's tree: a copied hash would break the chain, and
//! the server refuses to start on a log rewritten since its checkpoint.
//! Only the three published versions are ever served.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use policyhub::grpc::proto::{self, bundle_service_client::BundleServiceClient};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{NAMESPACE, Options, POLICY, Policyhub, authorized, ms, percentile},
};

/// The bound on start-up against an empty database.
const STARTUP_RATIO_BOUND: f64 = 2.0;

/// The bound on latencies against 10^3 stored versions.
const LATENCY_RATIO_BOUND: f64 = 1.2;

/// The published versions every seeded database has.
const PUBLISHED: usize = 3;

/// Seeding 10^6 is skipped when 10^5 took longer than this tenth of it.
const SEED_BUDGET: Duration = Duration::from_secs(120);

/// How long a start may take before the section fails.
const SERVING_WITHIN: Duration = Duration::from_secs(60);

/// A data directory holding `versions` stored versions.
struct Seeded {
    versions: usize,
    data_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// Copies of `template_id`'s row into `table`, one per value of the
/// recursive sequence `first..=last`: `generated` names the column taking
/// the sequence's value, `values` the columns set to an SQL expression;
/// the others are copied.
fn copy_rows(
    connection: &rusqlite::Connection,
    table: &str,
    template_id: i64,
    (first, last): (usize, usize),
    generated: &str,
    values: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut statement =
        connection.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let columns: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let columns: Vec<&String> = columns.iter().filter(|column| *column != "id").collect();
    let expressions: Vec<String> = columns
        .iter()
        .map(|column| {
            if *column == generated {
                "sequence.n".to_owned()
            } else if let Some((_, value)) = values.iter().find(|(name, _)| name == column) {
                (*value).to_owned()
            } else {
                format!("template.{column}")
            }
        })
        .collect();
    let names: Vec<&str> = columns.iter().map(|column| column.as_str()).collect();
    let inserted = connection.execute(
        &format!(
            "WITH RECURSIVE sequence(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM sequence WHERE n < {last}) \
             INSERT INTO {table} ({}) SELECT {} FROM sequence, {table} AS template WHERE template.id = {template_id}",
            names.join(", "),
            expressions.join(", ")
        ),
        [],
    )?;
    ensure!(
        inserted == last + 1 - first,
        "{table}: inserted {inserted} rows, not {}",
        last + 1 - first
    );
    Ok(())
}

/// Inserts versions `PUBLISHED + 1..=versions` as superseded drafts;
/// returns the id of the last event inserted, if any.
fn insert_history(database: &Path, versions: usize) -> anyhow::Result<Option<u64>> {
    if versions <= PUBLISHED {
        return Ok(None);
    }
    let mut connection = rusqlite::Connection::open(database)?;
    let transaction = connection.transaction()?;
    let version_template: i64 = transaction.query_row(
        "SELECT v.id FROM versions v JOIN policies p ON p.id = v.policy_id \
         WHERE p.namespace = ?1 AND p.name = ?2 AND v.version = 1",
        [NAMESPACE, POLICY],
        |row| row.get(0),
    )?;
    let event_template: i64 = transaction.query_row(
        "SELECT id FROM events WHERE kind = 'DRAFT_CREATED' AND namespace = ?1 AND name = ?2 \
         AND new_version = 1",
        [NAMESPACE, POLICY],
        |row| row.get(0),
    )?;
    let range = (PUBLISHED + 1, versions);
    copy_rows(
        &transaction,
        "versions",
        version_template,
        range,
        "version",
        &[
            ("state", "'SUPERSEDED'"),
            ("label", "NULL"),
            ("published_by", "NULL"),
            ("published_at", "NULL"),
            ("jws", "NULL"),
            ("key_id", "NULL"),
        ],
    )?;
    copy_rows(
        &transaction,
        "events",
        event_template,
        range,
        "new_version",
        &[("hash", "NULL")],
    )?;
    let last_event: i64 =
        transaction.query_row("SELECT max(id) FROM events", [], |row| row.get(0))?;
    transaction.commit()?;
    Ok(Some(last_event as u64))
}

/// A database with `versions` stored versions (none: a migrated empty
/// database).
async fn seed(versions: usize) -> anyhow::Result<(Seeded, Duration)> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let mut policyhub = Policyhub::start(Options {
        data_dir: Some(data_dir.clone()),
        ..Options::default()
    })
    .await?;
    // Migrated and serving before anything else, and stopped cleanly:
    // a server killed while it migrates leaves a half-made schema.
    wait_until_serving(&policyhub, SERVING_WITHIN).await?;
    if versions > 0 {
        policyhub.publish(PUBLISHED).await?;
    }
    policyhub.server.terminate(Duration::from_secs(30))?;
    let database = data_dir.join("policyhub.db");
    let inserted = tokio::task::spawn_blocking(move || insert_history(&database, versions))
        .await?
        .with_context(|| format!("seeding {versions} versions"))?;
    if let Some(last_event) = inserted {
        seal(&data_dir, last_event).await?;
    }
    Ok((
        Seeded {
            versions,
            data_dir,
            _dir: dir,
        },
        started.elapsed(),
    ))
}

/// Starts the server on `data_dir` untimed: it seals the copied events
/// into its hash chain and log's tree, and is stopped once it signed a
/// checkpoint over them, up to `last_event`, as a running server does
/// within its interval; the timed starts then verify only the events since
/// that checkpoint, as in a deployment.
async fn seal(data_dir: &Path, last_event: u64) -> anyhow::Result<()> {
    let mut policyhub = Policyhub::start(Options {
        data_dir: Some(data_dir.to_owned()),
        env: vec![(
            "POLICYHUB_AUDIT__CHECKPOINT_INTERVAL".into(),
            // A checkpoint over the sealed events within seconds, not
            // the default minute.
            "10s".into(),
        )],
        ..Options::default()
    })
    .await?;
    wait_until_serving(&policyhub, SEED_BUDGET).await?;
    let deadline = Instant::now() + SEED_BUDGET;
    loop {
        let newest = policyhub
            .policies
            .list_checkpoints(policyhub.request(proto::ListCheckpointsRequest {
                page_size: 1,
                page_token: String::new(),
            }))
            .await?
            .into_inner()
            .checkpoints
            .into_iter()
            .next();
        let signed_over = newest.map_or(0, |checkpoint| checkpoint.last_event_id);
        if signed_over >= last_event {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no checkpoint over the sealed events (to {last_event}) within {} s: the newest \
             is over the events to {signed_over}",
            SEED_BUDGET.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    policyhub.server.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// From process start to the first SERVING answer of Health/Check.
async fn startup_time(seeded: &Seeded) -> anyhow::Result<Duration> {
    let policyhub = Policyhub::start(Options {
        data_dir: Some(seeded.data_dir.clone()),
        ..Options::default()
    })
    .await?;
    wait_until_serving(&policyhub, SERVING_WITHIN).await?;
    Ok(policyhub.started.elapsed())
}

/// Polls Health/Check until it answers SERVING, for at most `within`.
async fn wait_until_serving(policyhub: &Policyhub, within: Duration) -> anyhow::Result<()> {
    let mut health = HealthClient::new(policyhub.endpoint.connect().await?);
    let deadline = Instant::now() + within;
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            health.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await;
        if let Ok(Ok(response)) = answer
            && response.into_inner().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the server did not serve within {} s",
            within.as_secs()
        );
        policyhub.server.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// p50s of GetActive, Activate and the first watch message, ms.
struct Latencies {
    get_active: f64,
    activate: f64,
    first_message: f64,
}

/// A running server on a seeded database, and the version it activates
/// next.
struct Serving {
    policyhub: Policyhub,
    bundles: BundleServiceClient<tonic::transport::Channel>,
    next_version: u32,
}

impl Serving {
    async fn start(seeded: &Seeded) -> anyhow::Result<Self> {
        let policyhub = Policyhub::start(Options {
            data_dir: Some(seeded.data_dir.clone()),
            ..Options::default()
        })
        .await?;
        let bundles = BundleServiceClient::new(policyhub.endpoint.connect().await?);
        Ok(Serving {
            policyhub,
            bundles,
            next_version: 2,
        })
    }

    async fn measure(&mut self, calls: usize) -> anyhow::Result<Latencies> {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let request = self.policyhub.request(proto::GetActiveRequest {
                namespace: NAMESPACE.into(),
                name: POLICY.into(),
                ..Default::default()
            });
            let issued = Instant::now();
            self.bundles.get_active(request).await?;
            samples.push(issued.elapsed());
        }
        let get_active = ms(percentile(&samples, 0.5));

        samples.clear();
        for _ in 0..calls / 4 {
            let version = self.next_version;
            // Between published versions 2 and 3 (1 is active at first).
            self.next_version = 5 - version;
            let issued = Instant::now();
            self.policyhub.activate(version, "benchmark").await?;
            samples.push(issued.elapsed());
        }
        let activate = ms(percentile(&samples, 0.5));

        samples.clear();
        for _ in 0..calls / 4 {
            let request = authorized(
                self.policyhub.token().as_ref(),
                proto::WatchActiveRequest {
                    namespace: NAMESPACE.into(),
                    names: vec![POLICY.into()],
                    ..Default::default()
                },
            );
            let issued = Instant::now();
            let mut stream = self.bundles.watch_active(request).await?.into_inner();
            let first = stream
                .message()
                .await?
                .context("the stream ended at once")?;
            samples.push(issued.elapsed());
            ensure!(!first.bundles.is_empty(), "the snapshot carries no bundle");
        }
        let first_message = ms(percentile(&samples, 0.5));
        Ok(Latencies {
            get_active,
            activate,
            first_message,
        })
    }
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let calls = settings.size(400, 2_000);
    let mut outcome = Outcome::default();

    let (empty, _) = seed(0).await?;
    let mut databases = Vec::new();
    for versions in [1_000, 10_000, 100_000] {
        let (seeded, took) = seed(versions).await?;
        println!(
            "  seeded {versions} versions in {:.1} s",
            took.as_secs_f64()
        );
        if versions == 100_000 && !settings.quick {
            if took * 10 < SEED_BUDGET {
                let (seeded, took) = seed(1_000_000).await?;
                println!("  seeded 1000000 versions in {:.1} s", took.as_secs_f64());
                databases.push(seeded);
            } else {
                outcome.notes.push(format!(
                    "10^6 versions skipped: seeding 10^5 took {:.0} s",
                    took.as_secs_f64()
                ));
            }
        }
        databases.push(seeded);
    }
    databases.sort_by_key(|seeded| seeded.versions);
    let sizes: Vec<usize> = databases.iter().map(|seeded| seeded.versions).collect();

    // Start-up: 10^5 stored versions against the empty database, in turn.
    let hundred_thousand = databases
        .iter()
        .find(|seeded| seeded.versions == 100_000)
        .context("no database of 10^5 versions")?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for repeat in 1..=settings.repeats {
        let empty_time = startup_time(&empty).await?;
        let seeded_time = startup_time(hundred_thousand).await?;
        println!(
            "  start-up, repeat {repeat}: {:.0} ms with 10^5 versions, {:.0} ms empty",
            ms(seeded_time),
            ms(empty_time)
        );
        ours.push(ms(seeded_time));
        theirs.push(ms(empty_time));
    }
    outcome.rows.push(
        Row::new(
            "start-up to first SERVING Health/Check, 10^5 stored versions",
            Unit::Milliseconds,
            ours,
            "same on a migrated empty database",
            theirs,
        )
        .target(Target::RatioAtMost(STARTUP_RATIO_BOUND)),
    );

    // Latencies against the server holding 10^3 versions, running beside.
    let (smallest, larger) = databases.split_first().context("no databases")?;
    let mut baseline = Serving::start(smallest).await?;
    baseline.measure(calls / 4).await?;
    for seeded in larger {
        let mut serving = Serving::start(seeded).await?;
        serving.measure(calls / 4).await?;
        let mut figures: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        for repeat in 1..=settings.repeats {
            let theirs = baseline.measure(calls).await?;
            let ours = serving.measure(calls).await?;
            println!(
                "  {} versions, repeat {repeat}: GetActive {:.3} ms ({:.3}), Activate {:.2} ms \
                 ({:.2}), first watch message {:.2} ms ({:.2}); in brackets {} versions",
                seeded.versions,
                ours.get_active,
                theirs.get_active,
                ours.activate,
                theirs.activate,
                ours.first_message,
                theirs.first_message,
                smallest.versions
            );
            for (figure, (mine, base)) in figures.iter_mut().zip([
                (ours.get_active, theirs.get_active),
                (ours.activate, theirs.activate),
                (ours.first_message, theirs.first_message),
            ]) {
                figure.0.push(mine);
                figure.1.push(base);
            }
        }
        let names = ["GetActive p50", "Activate p50", "first watch message p50"];
        for (name, (mine, base)) in names.into_iter().zip(figures) {
            outcome.rows.push(
                Row::new(
                    format!("{name}, {} stored versions", seeded.versions),
                    Unit::Milliseconds,
                    mine,
                    format!("same at {} stored versions", smallest.versions),
                    base,
                )
                .target(Target::RatioAtMost(LATENCY_RATIO_BOUND)),
            );
        }
    }
    outcome.notes.push(format!(
        "stored versions: {sizes:?}, all of one policy ({PUBLISHED} published, the rest \
         superseded drafts, each with its event); {calls} GetActive, {} Activate and {} new \
         streams per p50",
        calls / 4,
        calls / 4
    ));
    Ok(outcome)
}
