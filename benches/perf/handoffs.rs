//! Hand-offs: how often one call moves between the server's threads,
//! counted per call, with 2 tokio workers and with 16 on the same machine.
//!
//! A thread that blocks is woken again, and each wake-up of a parked thread
//! costs the kernel a context switch, and on a machine with idle cores, an
//! idle core to wake: the count predicts how a call's cost grows with the
//! cores that a 2-core machine cannot show. Counted over the server's
//! threads while a fixed number of calls runs and nothing else does:
//!
//! - thread wake-ups: voluntary context switches, summed over
//!   `/proc/<pid>/task/*/status` (each is a thread that blocked, so one
//!   wake-up);
//! - futex calls and CPU migrations, from `perf stat -p` when `perf` runs
//!   here (root, or `kernel.perf_event_paranoid` ≤ 1).
//!
//! GetActive is counted against `grpc.health.v1.Health/Check`, the cheapest
//! call of the same transport, both with 64 in flight on one connection and
//! one at a time; Activate (one caller, each call a committed change) against
//! Health/Check one at a time.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, ensure};
use policyhub::grpc::proto::policy_service_client::PolicyServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{Options, POLICY, Policyhub, activate},
    unary::{Call, Caller, IN_FLIGHT},
};

/// Worker counts compared: this machine's cores, and a large machine's.
const WORKERS: [usize; 2] = [2, 16];

/// Wake-ups GetActive may take beyond Health/Check's.
const GET_ACTIVE_EXTRA: f64 = 1.0;

/// What the server's threads did over a span of calls.
#[derive(Clone, Debug, Default)]
struct Counts {
    /// Voluntary and involuntary switches by thread name.
    by_thread: BTreeMap<String, (u64, u64)>,
    /// From `perf`, when it runs.
    futex: Option<u64>,
    migrations: Option<u64>,
}

/// Counts per call of one kind of call.
#[derive(Clone, Copy, Debug)]
struct PerCall {
    wake_ups: f64,
    preemptions: f64,
    futex: Option<f64>,
    migrations: Option<f64>,
}

impl Counts {
    /// Wake-ups per call by thread name, the busiest first.
    fn wake_ups_by_thread(&self, calls: usize) -> String {
        let mut threads: Vec<_> = self
            .by_thread
            .iter()
            .filter(|(_, (voluntary, _))| *voluntary > 0)
            .collect();
        threads.sort_by_key(|(_, (voluntary, _))| std::cmp::Reverse(*voluntary));
        threads
            .iter()
            .map(|(name, (voluntary, _))| format!("{name} {:.2}", *voluntary as f64 / calls as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn per_call(&self, calls: usize) -> PerCall {
        let per = |count: u64| count as f64 / calls as f64;
        PerCall {
            wake_ups: per(self.by_thread.values().map(|counts| counts.0).sum()),
            preemptions: per(self.by_thread.values().map(|counts| counts.1).sum()),
            futex: self.futex.map(per),
            migrations: self.migrations.map(per),
        }
    }
}

/// Context switches of the threads of `pid` by thread name: (voluntary,
/// involuntary). Threads that ended meanwhile are not counted; the
/// server's threads live as long as it does, bar the blocking pool's idle
/// ones.
fn context_switches(pid: &str) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut threads = BTreeMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        let mut name = String::new();
        let mut counts = (0, 0);
        for line in status.lines() {
            let field = |field: &str| {
                line.strip_prefix(field)
                    .and_then(|value| value.trim().parse::<u64>().ok())
            };
            if let Some(value) = line.strip_prefix("Name:") {
                name = value
                    .trim()
                    .trim_end_matches(|c: char| c.is_ascii_digit())
                    .to_owned();
            } else if let Some(count) = field("voluntary_ctxt_switches:") {
                counts.0 = count;
            } else if let Some(count) = field("nonvoluntary_ctxt_switches:") {
                counts.1 = count;
            }
        }
        let total: &mut (u64, u64) = threads.entry(name).or_default();
        total.0 += counts.0;
        total.1 += counts.1;
    }
    Ok(threads)
}

/// `perf stat` attached to a process until stopped.
struct Perf {
    child: Child,
    output: PathBuf,
}

const PERF_EVENTS: &str = "syscalls:sys_enter_futex,cpu-migrations";

impl Perf {
    /// Whether `perf stat` can count these events here.
    fn available() -> bool {
        Command::new("perf")
            .args(["stat", "-x,", "-e", PERF_EVENTS, "--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    async fn attach(pid: &str, directory: &Path) -> anyhow::Result<Self> {
        let output = directory.join("perf.csv");
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", PERF_EVENTS, "-p", pid, "-o"])
            .arg(&output)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run perf")?;
        // perf attaches to each thread before it counts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Perf { child, output })
    }

    /// Stops counting: (futex calls, migrations).
    fn stop(mut self) -> anyhow::Result<(u64, u64)> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "cannot stop perf");
        self.child.wait()?;
        let text = fs::read_to_string(&self.output)?;
        let count = |event: &str| {
            text.lines()
                .find(|line| line.contains(event))
                .and_then(|line| line.split(',').next())
                .and_then(|value| value.parse::<u64>().ok())
                .with_context(|| format!("perf counted no {event}: {text}"))
        };
        Ok((count("sys_enter_futex")?, count("cpu-migrations")?))
    }
}

/// Counts what `calls` does in the server `pid`, nothing else running.
async fn count<F: Future<Output = anyhow::Result<()>>>(
    pid: &str,
    perf_directory: Option<&Path>,
    calls: F,
) -> anyhow::Result<Counts> {
    let perf = match perf_directory {
        Some(directory) => Some(Perf::attach(pid, directory).await?),
        None => None,
    };
    let before = context_switches(pid)?;
    calls.await?;
    let after = context_switches(pid)?;
    let perf = perf.map(Perf::stop).transpose()?;
    let by_thread = after
        .iter()
        .map(|(name, (voluntary, involuntary))| {
            let (was_voluntary, was_involuntary) = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                (
                    voluntary.saturating_sub(was_voluntary),
                    involuntary.saturating_sub(was_involuntary),
                ),
            )
        })
        .collect::<BTreeMap<_, _>>();
    Ok(Counts {
        by_thread,
        futex: perf.map(|(futex, _)| futex),
        migrations: perf.map(|(_, migrations)| migrations),
    })
}

/// `calls` calls of `call`, `in_flight` at a time over `callers`.
async fn in_flight(
    callers: &[Caller],
    call: Call,
    calls: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for slot in 0..in_flight {
        let mut caller = callers[slot % callers.len()].clone();
        let share = calls / in_flight + usize::from(slot < calls % in_flight);
        tasks.spawn(async move {
            for _ in 0..share {
                caller.call(call).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// `calls` activations one after the other, each a change (versions 2
/// and 1 in turn).
async fn activations(
    policies: &mut PolicyServiceClient<Channel>,
    policyhub: &Policyhub,
    calls: usize,
) -> anyhow::Result<()> {
    let token = policyhub.token();
    for call in 0..calls {
        let version = if call % 2 == 0 { 2 } else { 1 };
        activate(policies, token.as_ref(), POLICY, version, "benchmark").await?;
    }
    Ok(())
}

/// One repeat's counts per call, by what was called.
struct Repeat {
    get_active: PerCall,
    health: PerCall,
    get_active_one: PerCall,
    health_one: PerCall,
    activate: PerCall,
}

async fn repeat(
    policyhub: &Policyhub,
    callers: &[Caller],
    perf: Option<&Path>,
    settings: &Settings,
) -> anyhow::Result<Repeat> {
    let pid = policyhub.server.pid();
    let many = settings.size(10_000, 40_000);
    let one_at_a_time = settings.size(1_000, 4_000);
    let writes = settings.size(100, 400);
    let single = std::slice::from_ref(&callers[0]);
    let per_call = async |call: Call, calls: usize, in_flight_calls: usize| {
        let callers = if in_flight_calls == 1 {
            single
        } else {
            callers
        };
        in_flight(callers, call, IN_FLIGHT, IN_FLIGHT).await?;
        let counts = count(&pid, perf, in_flight(callers, call, calls, in_flight_calls)).await?;
        anyhow::Ok(counts.per_call(calls))
    };
    let get_active = per_call(Call::GetActive, many, IN_FLIGHT).await?;
    let health = per_call(Call::HealthCheck, many, IN_FLIGHT).await?;
    let get_active_one = per_call(Call::GetActive, one_at_a_time, 1).await?;
    let health_one = per_call(Call::HealthCheck, one_at_a_time, 1).await?;
    let mut policies = policyhub.policies.clone();
    activations(&mut policies, policyhub, 10).await?;
    let counted = count(&pid, perf, activations(&mut policies, policyhub, writes)).await?;
    println!(
        "    wake-ups per Activate by thread: {}",
        counted.wake_ups_by_thread(writes)
    );
    let activate = counted.per_call(writes);
    Ok(Repeat {
        get_active,
        health,
        get_active_one,
        health_one,
        activate,
    })
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let perf_directory = tempfile::tempdir()?;
    let perf = Perf::available().then(|| perf_directory.path());
    if perf.is_none() {
        outcome.notes.push(
            "perf cannot count here (not installed, or kernel.perf_event_paranoid above 1): \
             futex calls and migrations are left out"
                .into(),
        );
    }
    for workers in WORKERS {
        let mut policyhub = Policyhub::start(Options {
            authenticated: true,
            env: vec![("TOKIO_WORKER_THREADS".into(), workers.to_string())],
            ..Options::default()
        })
        .await?;
        policyhub.publish(2).await?;
        let token = policyhub.token();
        let callers = vec![Caller::new(policyhub.endpoint.connect().await?, token)];
        let mut repeats = Vec::with_capacity(settings.repeats);
        for number in 1..=settings.repeats {
            let counted = repeat(&policyhub, &callers, perf, settings).await?;
            println!(
                "  {workers} workers, repeat {number}: wake-ups per GetActive {:.2} \
                 (Health/Check {:.2}), one at a time {:.2} ({:.2}), per Activate {:.2}",
                counted.get_active.wake_ups,
                counted.health.wake_ups,
                counted.get_active_one.wake_ups,
                counted.health_one.wake_ups,
                counted.activate.wake_ups,
            );
            repeats.push(counted);
        }
        rows(&mut outcome, workers, &repeats);
    }
    Ok(outcome)
}

/// The rows of one worker count: each kind of count, GetActive against
/// Health/Check in flight and one at a time, Activate against Health/Check
/// one at a time.
fn rows(outcome: &mut Outcome, workers: usize, repeats: &[Repeat]) {
    type Pick = fn(&PerCall) -> Option<f64>;
    let kinds: [(&str, Pick); 4] = [
        ("thread wake-ups", |counts| Some(counts.wake_ups)),
        ("preemptions", |counts| Some(counts.preemptions)),
        ("futex calls", |counts| counts.futex),
        ("CPU migrations", |counts| counts.migrations),
    ];
    type Calls = fn(&Repeat) -> (&PerCall, &PerCall);
    let comparisons: [(&str, &str, Calls); 3] = [
        (
            "GetActive, 64 in flight on 1 connection",
            "Health/Check, the same",
            |repeat| (&repeat.get_active, &repeat.health),
        ),
        (
            "GetActive, one at a time",
            "Health/Check, the same",
            |repeat| (&repeat.get_active_one, &repeat.health_one),
        ),
        (
            "Activate, one caller",
            "Health/Check, one at a time",
            |repeat| (&repeat.activate, &repeat.health_one),
        ),
    ];
    for (kind, pick) in kinds {
        for (calls, baseline, pair) in comparisons {
            let figures = |policyhub: bool| {
                repeats
                    .iter()
                    .map(pair)
                    .filter_map(|(ours, theirs)| pick(if policyhub { ours } else { theirs }))
                    .collect::<Vec<_>>()
            };
            let ours = figures(true);
            if ours.is_empty() {
                continue;
            }
            let mut row = Row::new(
                format!("{kind} per {calls}, {workers} workers"),
                Unit::Count,
                ours,
                baseline,
                figures(false),
            );
            if kind == "thread wake-ups" && calls.starts_with("GetActive") && workers == 16 {
                row = row.target(Target::AtMostBaselinePlus(GET_ACTIVE_EXTRA));
            }
            outcome.rows.push(row);
        }
    }
}
