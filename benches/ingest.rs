//! Decision logs in: decisions per second the server keeps from OPAs'
//! uploads, with its memory flat, against the same decisions written to
//! the database by the bench's own process, measured in turn in the same
//! run.
//!
//! The real `policyhub serve` binary on SQLite in a temporary directory,
//! its HTTP port on, namespace `payments` served to OPA with one Rego
//! policy active, keeping at most `INGEST_KEEP` (default 20,000) decisions
//! so that a sustained ingest runs at the retention's bound, dropping the
//! oldest with every upload. `INGEST_OPAS` (default 4) OPAs (by name, each
//! having asked for its bundle first) upload at once, each its own share
//! of `INGEST_DECISIONS` (default 50,000) decisions per round, as OPA's
//! decision_logs plugin does: `POST /v1/opa/logs/payments/<opa>`, a
//! gzipped JSON array of `INGEST_BATCH` (default 100) decisions of OPA's
//! format, on keep-alive connections. The uploads are made and compressed
//! before the clock starts.
//!
//! **The baseline**: the same decisions, as the server keeps them, written
//! by `Repository::keep_decisions` (the server's own storage code) into a
//! fresh SQLite database in this process, one batch after another (SQLite
//! has one writer), with the same retention: the database's cost with no
//! HTTP, JSON, gzip or authentication.
//!
//! Each of `INGEST_ROUNDS` (default 5) rounds measures both; the report
//! gives the medians with their spread and each round's ratio server /
//! baseline (target: at least 0.5×), and the server's RSS after each
//! round: flat, since the retention bounds what is kept and nothing is
//! held in memory between uploads. Every round checks that the server
//! keeps exactly `INGEST_KEEP` decisions.
//!
//! Run with `cargo bench --bench ingest`.

use std::{
    env,
    io::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use chrono::Utc;
use futures::{StreamExt, stream};
use policyhub::domain::Namespace;
use policyhub::domain::decision::Decision;
use policyhub::domain::runtime::RuntimeId;
use policyhub::grpc::proto;
use policyhub::storage::{self, Repository, Retention};
use serde_json::{Value, json};

mod support;

use support::{Options, Policyhub, free_port, load_average, median_and_spread, rss_kib};

const NAMESPACE: &str = "payments";

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    env::var(name).map_or(Ok(default), |text| {
        text.parse().with_context(|| format!("{name}={text}"))
    })
}

/// One decision as OPA's decision log writes it.
fn decision(id: u64) -> Value {
    let currency = ["EUR", "USD", "GBP"][(id % 3) as usize];
    json!({
        "labels": {"id": "bench-opa", "version": "1.22.3"},
        "decision_id": format!("d-{id:012}"),
        "bundles": {NAMESPACE: {"revision": "1;authz@1"}},
        "path": "payments/authz/allow",
        "input": {
            "amount": id % 1000,
            "currency": currency,
            "user": format!("user-{}", id % 5000),
            "roles": ["clerk"],
        },
        "result": id % 1000 <= 500,
        "requested_by": "10.0.0.7:51234",
        "timestamp": "2026-11-29T10:00:00.123456789Z",
        "metrics": {"timer_rego_query_eval_ns": 41234},
        "req_id": id,
    })
}

/// The decision as the server keeps it, for the baseline.
fn kept(uploaded: &Value, runtime: &RuntimeId) -> anyhow::Result<Decision> {
    Ok(Decision {
        id: uploaded["decision_id"]
            .as_str()
            .context("decision_id")?
            .to_owned(),
        runtime: runtime.clone(),
        path: uploaded["path"].as_str().context("path")?.to_owned(),
        input: Some(policyhub::domain::canonical_json(&uploaded["input"])),
        result: Some(policyhub::domain::canonical_json(&uploaded["result"])),
        revision: Some(1),
        decided_at: Utc::now(),
    })
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// How many decisions the server keeps for `payments`.
async fn kept_by_server(policyhub: &mut Policyhub, at_most: usize) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = policyhub
            .policies
            .list_decisions(proto::ListDecisionsRequest {
                namespace: NAMESPACE.into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        count += page.decisions.len();
        ensure!(count <= at_most, "the server keeps more than {at_most}");
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = setting("INGEST_KEEP", 20_000)?;
    let opas = setting("INGEST_OPAS", 4)?;
    let per_round = setting("INGEST_DECISIONS", 50_000)?;
    let batch = setting("INGEST_BATCH", 100)?;
    let rounds = setting("INGEST_ROUNDS", 5)?;
    ensure!(per_round >= keep, "INGEST_DECISIONS must reach INGEST_KEEP");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut policyhub = Policyhub::start(Options {
        env: vec![
            ("POLICYHUB_HTTP_LISTEN".into(), http.to_string()),
            (
                "POLICYHUB_OPA__NAMESPACES__PAYMENTS__ROOTS".into(),
                r#"["payments"]"#.into(),
            ),
            (
                "POLICYHUB_DECISIONS__MAX_PER_NAMESPACE".into(),
                keep.to_string(),
            ),
        ],
        ..Options::default()
    })
    .await?;
    // A Rego policy active, so that OPAs may ask for its bundle.
    let body = json!({
        "modules": {"authz/allow.rego": "package payments.authz\n\ndefault allow := false\n\n\
            allow if input.amount <= data.payments.limits.max\n"},
        "data": {"payments": {"limits": {"max": 500}}},
    });
    policyhub
        .publish_body(NAMESPACE, "authz", &body, true)
        .await?;
    let client = reqwest::Client::new();
    let names: Vec<String> = (0..opas).map(|n| format!("opa-{n}")).collect();
    for name in &names {
        let asked = client
            .get(format!(
                "http://{http}/v1/opa/bundles/{NAMESPACE}?runtime.id={name}"
            ))
            .send()
            .await?;
        ensure!(asked.status().is_success(), "{name}: {}", asked.status());
    }

    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("baseline.db").display()
    );
    let db = storage::connect(&url, 5).await?;
    storage::migrate(&db).await?;
    let repository = Repository::open(db).await?;
    let namespace = Namespace::parse("namespace", NAMESPACE)?;
    let runtime = RuntimeId::parse("runtime_id", "opa-0")?;
    let retention = || Retention {
        max_count: keep as u64,
        received_after: Utc::now() - chrono::TimeDelta::days(7),
    };

    println!(
        "ingest: {per_round} decisions a round in uploads of {batch} from {opas} OPAs, \
         keeping {keep}, {rounds} rounds; load average {}",
        load_average()
    );
    let (mut server_rates, mut baseline_rates, mut ratios, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut next_id = 0u64;
    for round in 0..rounds {
        let decisions: Vec<Value> = (next_id..next_id + per_round as u64)
            .map(decision)
            .collect();
        next_id += per_round as u64;
        let batches: Vec<&[Value]> = decisions.chunks(batch).collect();
        let uploads: Vec<(String, Vec<u8>)> = batches
            .iter()
            .enumerate()
            .map(|(index, batch)| {
                let name = &names[index % names.len()];
                Ok((
                    format!("http://{http}/v1/opa/logs/{NAMESPACE}/{name}"),
                    gzip(&serde_json::to_vec(batch)?)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        let answers: Vec<anyhow::Result<()>> = stream::iter(uploads)
            .map(|(url, body)| {
                let client = &client;
                async move {
                    let answer = client
                        .post(url)
                        .header("content-type", "application/json")
                        .header("content-encoding", "gzip")
                        .body(body)
                        .send()
                        .await?;
                    let status = answer.status();
                    ensure!(status.is_success(), "{status}: {}", answer.text().await?);
                    Ok(())
                }
            })
            .buffer_unordered(opas)
            .collect()
            .await;
        answers.into_iter().collect::<anyhow::Result<()>>()?;
        let server_rate = per_round as f64 / started.elapsed().as_secs_f64();
        let held = kept_by_server(&mut policyhub, keep).await?;
        ensure!(held == keep, "the server keeps {held}, not {keep}");
        rss.push(rss_kib(policyhub.server.pid())? as f64 / 1024.0);

        let as_kept: Vec<Vec<Decision>> = batches
            .iter()
            .map(|batch| batch.iter().map(|one| kept(one, &runtime)).collect())
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        for batch in &as_kept {
            repository
                .keep_decisions(&namespace, batch, retention())
                .await?;
        }
        let baseline_rate = per_round as f64 / started.elapsed().as_secs_f64();
        println!(
            "round {round}: server {server_rate:.0} decisions/s, in process {baseline_rate:.0} \
             decisions/s, ratio {:.2}; server RSS {:.1} MiB",
            server_rate / baseline_rate,
            rss[round],
        );
        server_rates.push(server_rate);
        baseline_rates.push(baseline_rate);
        ratios.push(server_rate / baseline_rate);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (server, server_low, server_high) = median_and_spread(server_rates);
    let (baseline, baseline_low, baseline_high) = median_and_spread(baseline_rates);
    let (ratio, ratio_low, ratio_high) = median_and_spread(ratios);
    let after_first = &rss[1.min(rss.len() - 1)..];
    let lowest = after_first.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = after_first
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    println!(
        "server: median {server:.0} decisions/s ({server_low:.0} to {server_high:.0}); \
         in process: median {baseline:.0} decisions/s ({baseline_low:.0} to {baseline_high:.0}); \
         ratio server / in process: median {ratio:.2} ({ratio_low:.2} to {ratio_high:.2}); \
         target at least 0.5"
    );
    println!(
        "server RSS: {:.1} MiB after the first round, then {lowest:.1} to {highest:.1} MiB, \
         {:.1} MiB after the last, over {next_id} decisions uploaded",
        rss[0],
        rss[rss.len() - 1],
    );
    Ok(())
}
