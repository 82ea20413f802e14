//! Performance against baselines measured in the same run: one table of
//! `measure | policyhub | baseline | ratio | target`, each target being
//! what the project holds itself to.
//!
//! ```sh
//! cargo bench --bench perf                       # full: about 55 minutes on 2 cores
//! PERF_QUICK=1 cargo bench --bench perf          # every section, small sizes: about 45 minutes
//! PERF_SECTIONS=unary,sqlite cargo bench --bench perf
//! ```
//!
//! `cargo bench` builds the release `policyhub` binary before the bench, and
//! the bench starts that binary (`policyhub serve` on SQLite in a temporary
//! directory) for every measurement, so the server measured is always the
//! current source.
//!
//! Settings:
//!
//! - `PERF_QUICK=1`: small sizes (about 45 minutes in all on 2 cores);
//! - `PERF_REPEATS` (default 3): how often each comparison runs, policyhub
//!   and its baseline alternating; a row shows the medians and the spread
//!   (min–max) of the per-repeat ratios, and its target is judged on the
//!   median ratio;
//! - `PERF_SECTIONS=a,b`: only these sections (names below);
//! - `PERF_SERVER_WORKERS=N`: the servers started run N tokio workers
//!   (`TOKIO_WORKER_THREADS`), as on a machine of N cores; the bench's own
//!   clients keep theirs;
//! - `ETCD_BIN`: the etcd binary (otherwise `etcd` on the PATH, or Debian's
//!   `etcd-server` installed with apt-get when running as root).
//!
//! Sections, each in its own file:
//!
//! - `unary` ([`unary`]): GetActive against the same server's
//!   `grpc.health.v1.Health/Check`;
//! - `fanout` ([`fanout`]): one activation to many watch streams against
//!   etcd's native gRPC watch, and its server CPU time per delivered update
//!   against etcd's and a bare HTTP/2 server's ([`floor`]);
//! - `tls` ([`fanout`] with [`tls`]): the same with TLS on both sides;
//! - `memory` ([`memory`]): server RSS per idle stream by body size;
//! - `scale` ([`scale`]): toward 100,000 streams on one server;
//! - `sqlite` ([`sqlite`]): Activate against raw durable SQLite commits;
//! - `postgres` ([`postgres`]): Activate against raw PostgreSQL commits,
//!   and the namespace lock's cost to concurrent activations;
//! - `startup` ([`startup`]): start-up and latencies by stored versions;
//! - `wide` ([`wide`]): streams of a namespace of 1,000 policies against
//!   streams of one policy, one activation;
//! - `history` ([`history`]): an activation's transaction with the hash
//!   chain and a signed checkpoint against the same without them;
//! - `reports` ([`reports`]): runtimes' status reports at fleet scale, what
//!   they cost the server, Activate and the fleet reads;
//! - `identity` ([`identity`]): GetActive from a caller granted by role
//!   bindings among three OpenID Connect issuers, against a caller of one
//!   issuer's roles claim;
//! - `webhooks` ([`webhooks`]): Activate with ten webhook subscriptions
//!   delivering against none, and the time from commit to receipt;
//! - `ofrep` ([`ofrep`]): the agent's OFREP bulk evaluation of 100 flags
//!   against its plain GET of one policy, and a 304 against a 200;
//! - `handoffs` ([`handoffs`]): thread wake-ups, futex calls and migrations
//!   per GetActive, Health/Check and Activate, with 2 and 16 tokio workers.
//!
//! The machine is usually noisy and the bench's own clients share its
//! cores with the servers: the header gives the load average, and the
//! spreads say how much a figure moved between repeats.

mod etcd;
mod fanout;
mod floor;
mod handoffs;
mod history;
mod identity;
mod memory;
mod ofrep;
mod postgres;
mod reports;
mod scale;
mod sqlite;
mod startup;
mod tls;
mod unary;
mod webhooks;
mod wide;

#[path = "../support/mod.rs"]
mod support;

use std::{env, fmt::Write as _, process::Command};

use anyhow::{Context, bail, ensure};

/// The server's allocator, so the floor (this binary, started again) and
/// the clients allocate as the server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A part of the bench that `PERF_SECTIONS` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Unary,
    Fanout,
    Tls,
    Memory,
    Scale,
    Sqlite,
    Postgres,
    Startup,
    Wide,
    History,
    Reports,
    Identity,
    Webhooks,
    Ofrep,
    Handoffs,
}

impl Section {
    const ALL: [Section; 15] = [
        Section::Unary,
        Section::Fanout,
        Section::Tls,
        Section::Memory,
        Section::Scale,
        Section::Sqlite,
        Section::Postgres,
        Section::Startup,
        Section::Wide,
        Section::History,
        Section::Reports,
        Section::Identity,
        Section::Webhooks,
        Section::Ofrep,
        Section::Handoffs,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Unary => "unary",
            Section::Fanout => "fanout",
            Section::Tls => "tls",
            Section::Memory => "memory",
            Section::Scale => "scale",
            Section::Sqlite => "sqlite",
            Section::Postgres => "postgres",
            Section::Startup => "startup",
            Section::Wide => "wide",
            Section::History => "history",
            Section::Reports => "reports",
            Section::Identity => "identity",
            Section::Webhooks => "webhooks",
            Section::Ofrep => "ofrep",
            Section::Handoffs => "handoffs",
        }
    }
}

/// What every section is told.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Small sizes.
    pub quick: bool,
    /// Runs of each comparison.
    pub repeats: usize,
    /// Runs of a section again while one of its rows is noisy.
    noisy_reruns: usize,
    sections: Vec<Section>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Self> {
        let quick = env::var("PERF_QUICK").is_ok_and(|value| !value.is_empty() && value != "0");
        let repeats: usize = env::var("PERF_REPEATS")
            .unwrap_or("3".into())
            .parse()
            .context("PERF_REPEATS is not a number")?;
        ensure!(repeats > 0, "PERF_REPEATS must be at least 1");
        let noisy_reruns: usize = env::var("PERF_NOISY_RERUNS")
            .unwrap_or("2".into())
            .parse()
            .context("PERF_NOISY_RERUNS is not a number")?;
        let sections = match env::var("PERF_SECTIONS") {
            Ok(names) if !names.trim().is_empty() => names
                .split(',')
                .map(|name| {
                    let name = name.trim();
                    Section::ALL
                        .into_iter()
                        .find(|section| section.name() == name)
                        .with_context(|| {
                            format!(
                                "PERF_SECTIONS: no section {name:?}; sections: {}",
                                Section::ALL.map(Section::name).join(", ")
                            )
                        })
                })
                .collect::<anyhow::Result<_>>()?,
            _ => Section::ALL.to_vec(),
        };
        Ok(Settings {
            quick,
            repeats,
            noisy_reruns,
            sections,
        })
    }

    /// `quick` in quick mode, `full` otherwise.
    pub fn size<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

// ------------------------------------------------------------------ table

/// How a figure is written.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    Microseconds,
    Milliseconds,
    Seconds,
    PerSecond,
    KiB,
    MiB,
    /// Events per call.
    Count,
}

impl Unit {
    fn format(self, value: f64) -> String {
        match self {
            Unit::Microseconds => format!("{value:.1} µs"),
            Unit::Milliseconds if value < 1.0 => format!("{value:.3} ms"),
            Unit::Milliseconds => format!("{value:.1} ms"),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::PerSecond => format!("{value:.0}/s"),
            Unit::KiB => format!("{value:.1} KiB"),
            Unit::MiB => format!("{value:.0} MiB"),
            Unit::Count => format!("{value:.2}"),
        }
    }
}

/// What a row promises, judged on the median.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The ratio policyhub/baseline is at least this.
    RatioAtLeast(f64),
    /// The ratio policyhub/baseline is at most this.
    RatioAtMost(f64),
    /// policyhub's own figure is at most this, in the row's unit.
    AtMost(f64),
    /// policyhub's own figure is below this, in the row's unit.
    Below(f64),
    /// policyhub's own figure exceeds the baseline's by at most this, in
    /// the row's unit (medians compared).
    AtMostBaselinePlus(f64),
}

/// A target's factor with at most two decimals: 0.5, 2, 0.91 for 1/1.1.
fn factor(bound: f64) -> String {
    let text = format!("{bound:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// How far a row's repeats may stray from their median, as a fraction of
/// it, for its targets to be judged.
const NOISE_BOUND: f64 = 0.2;

impl Target {
    fn judge(
        self,
        ours: f64,
        theirs: Option<f64>,
        ratio: Option<f64>,
        unit: Unit,
        noisy: bool,
    ) -> String {
        let (text, met) = match self {
            Target::RatioAtLeast(bound) => {
                (format!("≥ {}×", factor(bound)), ratio.map(|r| r >= bound))
            }
            Target::RatioAtMost(bound) => {
                (format!("≤ {}×", factor(bound)), ratio.map(|r| r <= bound))
            }
            Target::AtMost(bound) => (format!("≤ {}", unit.format(bound)), Some(ours <= bound)),
            Target::Below(bound) => (format!("< {}", unit.format(bound)), Some(ours < bound)),
            Target::AtMostBaselinePlus(bound) => (
                format!("≤ baseline + {}", unit.format(bound)),
                theirs.map(|theirs| ours <= theirs + bound),
            ),
        };
        let verdict = match met {
            _ if noisy => "noisy",
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "no figure",
        };
        format!("{text}: {verdict}")
    }
}

/// One line of the table: policyhub's figure per repeat, and its
/// baseline's from the same repeats.
pub struct Row {
    pub measure: String,
    pub unit: Unit,
    pub ours: Vec<f64>,
    /// What the baseline is, named.
    pub baseline: String,
    /// The baseline's figure per repeat, paired with `ours`; empty when the
    /// baseline is a bound rather than a measurement.
    pub theirs: Vec<f64>,
    pub targets: Vec<Target>,
}

impl Row {
    /// A row comparing `ours` with `theirs`, repeat by repeat.
    pub fn new(
        measure: impl Into<String>,
        unit: Unit,
        ours: Vec<f64>,
        baseline: impl Into<String>,
        theirs: Vec<f64>,
    ) -> Self {
        Row {
            measure: measure.into(),
            unit,
            ours,
            baseline: baseline.into(),
            theirs,
            targets: Vec::new(),
        }
    }

    pub fn target(mut self, target: Target) -> Self {
        self.targets.push(target);
        self
    }

    fn ratios(&self) -> Vec<f64> {
        self.ours
            .iter()
            .zip(&self.theirs)
            .filter(|(_, theirs)| **theirs > 0.0)
            .map(|(ours, theirs)| ours / theirs)
            .collect()
    }

    /// The figures per repeat `target` is judged on: the ratios, or
    /// policyhub's own figures for a bound on them.
    fn judged(&self, target: Target) -> Vec<f64> {
        match target {
            Target::RatioAtLeast(_) | Target::RatioAtMost(_) => self.ratios(),
            Target::AtMost(_) | Target::Below(_) | Target::AtMostBaselinePlus(_) => {
                self.ours.clone()
            }
        }
    }

    /// How far the figures its targets are judged on stray from their
    /// median at most, as a fraction of it: 0.1 when every repeat is within
    /// ±10 %; 0 for a row without a target.
    pub fn spread(&self) -> f64 {
        self.targets
            .iter()
            .map(|&target| spread(&self.judged(target)))
            .fold(0.0, f64::max)
    }

    /// Whether the row has a target its repeats disagree too much to judge.
    pub fn noisy(&self) -> bool {
        beyond_noise_bound(self.spread())
    }

    fn render(&self) -> String {
        let ours = median(&self.ours);
        let ratios = self.ratios();
        let ratio = (!ratios.is_empty()).then(|| median(&ratios));
        let range = |values: &[f64], format: &dyn Fn(f64) -> String| {
            if values.len() < 2 {
                String::new()
            } else {
                let (min, max) = min_max(values);
                format!(" ({}–{})", format(min), format(max))
            }
        };
        let baseline = if self.theirs.is_empty() {
            self.baseline.clone()
        } else {
            format!(
                "{}: {}",
                self.baseline,
                self.unit.format(median(&self.theirs))
            )
        };
        let ratio_text = match ratio {
            Some(ratio) => format!("{ratio:.2}{}", range(&ratios, &|r| format!("{r:.2}"))),
            None => "—".into(),
        };
        let target = if self.targets.is_empty() {
            "—".to_owned()
        } else {
            self.targets
                .iter()
                .map(|&target| {
                    let noisy = beyond_noise_bound(spread(&self.judged(target)));
                    let theirs = (!self.theirs.is_empty()).then(|| median(&self.theirs));
                    target.judge(ours, theirs, ratio, self.unit, noisy)
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        format!(
            "| {} | {} | {} | {} | {} |",
            self.measure,
            self.unit.format(ours),
            baseline,
            ratio_text,
            target
        )
    }
}

/// The median (the mean of the middle two of an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// Whether repeats that stray `spread` from their median disagree too much
/// to judge a target on (a spread of no number included).
fn beyond_noise_bound(spread: f64) -> bool {
    spread.is_nan() || spread > NOISE_BOUND
}

/// How far `values` stray from their median at most, as a fraction of it.
fn spread(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let middle = median(values);
    let (min, max) = min_max(values);
    (middle - min).max(max - middle) / middle.abs()
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), &value| {
            (min.min(value), max.max(value))
        })
}

// ------------------------------------------------------------------ header

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpus} CPUs (nproc), {:.1} GiB memory, load average {}",
        memory_kib as f64 / (1024.0 * 1024.0),
        support::load_average()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(spec) = env::var(floor::ROLE) {
        return floor::serve(&spec).await;
    }
    let settings = Settings::from_env()?;
    let started = std::time::Instant::now();
    let etcd = if settings
        .sections
        .iter()
        .any(|section| matches!(section, Section::Fanout | Section::Tls | Section::Memory))
    {
        Some(etcd::Etcd::find()?)
    } else {
        None
    };
    let mut header = String::new();
    writeln!(
        header,
        "perf: {} mode, {} repeats, sections {}",
        if settings.quick { "quick" } else { "full" },
        settings.repeats,
        settings
            .sections
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",")
    )?;
    writeln!(header, "machine: {}", machine())?;
    writeln!(
        header,
        "date: {}, commit: {}{}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        if command_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        }
    )?;
    if let Some(etcd) = &etcd {
        writeln!(header, "baseline server: {}", etcd.version)?;
    }
    if let Ok(workers) = env::var("PERF_SERVER_WORKERS") {
        writeln!(header, "server tokio workers: {workers}")?;
    }
    print!("{header}");

    let mut rows: Vec<(Section, Row)> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for &section in &settings.sections {
        println!("section {} ...", section.name());
        let section_started = std::time::Instant::now();
        let result = run_section(section, &settings, etcd.as_ref()).await;
        let mut outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                // One failed section does not lose the others' figures.
                eprintln!("section {} failed: {error:#}", section.name());
                notes.push(format!("{}: FAILED: {error:#}", section.name()));
                continue;
            }
        };
        let mut reruns = 0;
        while reruns < settings.noisy_reruns && outcome.rows.iter().any(Row::noisy) {
            reruns += 1;
            println!("section {} again: a row is noisy ...", section.name());
            match run_section(section, &settings, etcd.as_ref()).await {
                Ok(again) => outcome.keep_quieter(again),
                Err(error) => {
                    eprintln!("section {} failed again: {error:#}", section.name());
                    break;
                }
            }
            support::wait_for_fds_to_close().await;
        }
        if reruns > 0 {
            outcome.notes.push(format!(
                "run {} times, each row from the run whose repeats agree best",
                reruns + 1
            ));
        }
        println!(
            "section {} done in {:.0} s",
            section.name(),
            section_started.elapsed().as_secs_f64()
        );
        notes.extend(
            outcome
                .notes
                .into_iter()
                .map(|note| format!("{}: {note}", section.name())),
        );
        rows.extend(outcome.rows.into_iter().map(|row| (section, row)));
        support::wait_for_fds_to_close().await;
    }

    println!();
    print!("{header}");
    println!(
        "ratio = policyhub / baseline, median of {} repeats (min–max); targets judged on the median, \
         and only when every repeat is within ±{:.0} % of it (otherwise: noisy)",
        settings.repeats,
        NOISE_BOUND * 100.0
    );
    println!();
    println!("| measure | policyhub | baseline (named) | ratio | target |");
    println!("|---|---:|---|---:|---|");
    for (section, row) in &rows {
        let mut row_text = row.render();
        // The section names the row's group.
        row_text.replace_range(..2, &format!("| {}: ", section.name()));
        println!("{row_text}");
    }
    if !notes.is_empty() {
        println!();
        for note in &notes {
            println!("- {note}");
        }
    }
    println!();
    println!(
        "load average at the end: {}; the run took {:.1} min",
        support::load_average(),
        started.elapsed().as_secs_f64() / 60.0
    );
    if notes.iter().any(|note| note.contains("FAILED")) {
        bail!("a section failed");
    }
    Ok(())
}

/// Runs one section.
async fn run_section(
    section: Section,
    settings: &Settings,
    etcd: Option<&etcd::Etcd>,
) -> anyhow::Result<Outcome> {
    match section {
        Section::Unary => unary::run(settings).await,
        Section::Fanout => fanout::run(settings, etcd.context("no etcd")?, None).await,
        Section::Tls => {
            let certificates = tls::Certificates::generate()?;
            fanout::run(settings, etcd.context("no etcd")?, Some(&certificates.tls)).await
        }
        Section::Memory => memory::run(settings, etcd.context("no etcd")?).await,
        Section::Scale => scale::run(settings).await,
        Section::Sqlite => sqlite::run(settings).await,
        Section::Postgres => postgres::run(settings).await,
        Section::Startup => startup::run(settings).await,
        Section::Wide => wide::run(settings).await,
        Section::History => history::run(settings).await,
        Section::Reports => reports::run(settings).await,
        Section::Identity => identity::run(settings).await,
        Section::Webhooks => webhooks::run(settings).await,
        Section::Ofrep => ofrep::run(settings).await,
        Section::Handoffs => handoffs::run(settings).await,
    }
}

/// What a section hands back: its rows, and what the reader must know to
/// read them (sizes used, limits that bound).
#[derive(Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Outcome {
    /// Takes from `again`, a later run of the same section, each row that
    /// was noisy here and whose repeats agree better there: a row is its
    /// measure against its baseline (one measure may have two).
    fn keep_quieter(&mut self, again: Outcome) {
        for row in again.rows {
            if let Some(held) = self
                .rows
                .iter_mut()
                .find(|held| held.measure == row.measure && held.baseline == row.baseline)
                && held.noisy()
                && row.spread() < held.spread()
            {
                *held = row;
            }
        }
    }
}
