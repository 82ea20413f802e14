//! `policyhub-conformance`: runs the conformance tests against a runtime's
//! test service.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use policyhub_conformance::{all_tests, harness::Run, service::Service};

/// Runs the runtime contract's conformance tests against the runtime
/// behind a test service; exits 1 when a test fails.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The test service's address, such as http://127.0.0.1:8111.
    #[arg(long, required_unless_present = "list")]
    service: Option<String>,
    /// The policyhub binary the tests start [default: the one beside this
    /// binary, else on PATH]
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// Run only the tests whose id contains this; repeat for several.
    #[arg(long = "run")]
    filters: Vec<String>,
    /// Skip the tests whose id contains this, even those --run names;
    /// repeat for several.
    #[arg(long = "skip")]
    skips: Vec<String>,
    /// A PostgreSQL server (postgres://USER@HOST:PORT/DATABASE, a role that
    /// may create databases): each test that runs two replicas of one
    /// server gets a database of its own there, made and dropped with psql.
    /// Without it those tests are skipped.
    #[arg(long, env = "POLICYHUB_CONFORMANCE_DATABASE_URL")]
    database_url: Option<String>,
    /// A seed for the tests that draw faults at random; repeat for
    /// several. A seed draws the same faults in the same order, so a
    /// failing one replays [default: 1, 2 and 3, unless --fresh-seeds]
    #[arg(long = "seed")]
    seeds: Vec<u64>,
    /// Draw this many new seeds at random (printed) besides those given.
    #[arg(long, default_value_t = 0)]
    fresh_seeds: usize,
    /// How long each seed draws faults, such as 5s or 10m.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    fault_duration: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the tests, with the obligations each checks and the
    /// capabilities each needs, as JSON, and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let tests = all_tests();
    if args.list {
        let listed: Vec<serde_json::Value> = tests
            .iter()
            .map(|test| {
                serde_json::json!({
                    "id": test.id, "obligations": test.obligations, "needs": test.needs,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let binary = match args.server_binary {
        Some(binary) => binary,
        None => beside_this_binary()?,
    };
    let service = Service::new(args.service.as_deref().expect("required by clap"))?;
    let info = service.info().await?;
    println!(
        "{}: declares {}",
        info.name,
        serde_json::to_string(&info.capabilities)?
    );
    let mut seeds = args.seeds;
    seeds.extend(std::iter::repeat_with(|| fastrand::u64(..)).take(args.fresh_seeds));
    if seeds.is_empty() {
        seeds = vec![1, 2, 3];
    }
    let run = Run {
        binary: &binary,
        service,
        info,
        filters: &args.filters,
        skips: &args.skips,
        database_url: args.database_url.as_deref(),
        seeds: &seeds,
        fault_duration: args.fault_duration,
    };
    let report = run.run(&tests).await;
    println!(
        "{} passed, {} failed, {} skipped",
        report.passed, report.failed, report.skipped
    );
    if let Some(path) = args.report {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `policyhub` in this binary's directory, else the name for PATH.
fn beside_this_binary() -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()?.with_file_name("policyhub");
    Ok(if beside.exists() {
        beside
    } else {
        PathBuf::from("policyhub")
    })
}
