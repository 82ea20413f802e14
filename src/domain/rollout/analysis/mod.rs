//! Analyses (docs/src/guides/rollout-analysis.md): a rollout judged by the
//! service's own metrics as well as by its runtimes' reports. Each analysis
//! is a PromQL query against a Prometheus server the deployment configures,
//! measured every interval while its rollout (or its step) runs, and a
//! success condition over the query's `result`, as Argo Rollouts'
//! AnalysisTemplate declares them: more failed measurements than the
//! failure limit fail the rollout, more inconclusive ones than the
//! inconclusive limit or more errors in a row than the consecutive-error
//! limit pause it for a person, and `count` successful measurements within
//! those limits complete it. Only a successful measurement passes: neither
//! an inconclusive one nor an error ever counts toward `count`.
//!
//! The query is a template over the rollout's facts (`{{ namespace }}`,
//! `{{ candidate }}`, …) and the condition an expression over `result`,
//! both in MiniJinja's expression language: a well-kept parser whose
//! expressions, without its built-in filters and functions, are the
//! comparisons and `and`/`or`/`not` a condition needs. Both are checked
//! before anything is written, and every variable they name must be one of
//! the rollout's facts.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod expression;

pub use expression::{QueryFacts, check_condition, evaluate, render_query};

use super::{Rollout, RolloutStep};
use crate::domain::{Error, Result};

/// Most analyses of one rollout, its own and its steps' together.
pub const MAX_ANALYSES: usize = 20;
/// Longest query or condition text.
pub const MAX_ANALYSIS_TEXT_BYTES: usize = 4096;
/// Longest interval between two measurements.
pub const MAX_ANALYSIS_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The Prometheus server an analysis that names none asks.
pub const DEFAULT_PROMETHEUS: &str = "default";
/// Errors in a row an analysis that sets no limit tolerates, as Argo
/// Rollouts' `consecutiveErrorLimit` defaults.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

/// The facts a query may name, each rendered as PromQL label-value text.
pub const QUERY_VARIABLES: [&str; 7] = [
    "namespace",
    "rollout",
    "policies",
    "candidate",
    "baseline",
    "step",
    "percentage",
];

/// The one variable of a success condition: the query's value.
pub const CONDITION_VARIABLE: &str = "result";

/// One analysis, as declared on a rollout (measured in every step) or on a
/// step (measured in that step only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    /// Unique within the rollout; names its measurements.
    pub name: String,
    /// Which configured Prometheus server answers the query.
    pub prometheus: String,
    /// A PromQL query template over `QUERY_VARIABLES`; it must answer one
    /// number (a scalar, or a vector of one sample).
    pub query: String,
    /// An expression over `result`, true when a measurement passes.
    pub success_condition: String,
    /// Time between two measurements; the first is one interval after the
    /// step starts or the rollout resumes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Successful measurements, within the limits, after which the
    /// analysis passed and stops; 0: it measures as long as its step runs.
    /// A step's analysis with a count holds the step until it passed.
    pub count: u32,
    /// Failed measurements tolerated: one more fails the rollout.
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated: one more pauses the rollout.
    pub inconclusive_limit: u32,
    /// Errors in a row tolerated: one more pauses the rollout. Rollouts
    /// stored before the limit existed take the default.
    #[serde(default = "default_consecutive_error_limit")]
    pub consecutive_error_limit: u32,
}

fn default_consecutive_error_limit() -> u32 {
    DEFAULT_CONSECUTIVE_ERROR_LIMIT
}

/// How one measurement came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeasurementPhase {
    /// The condition held.
    Successful,
    /// The condition did not hold.
    Failed,
    /// No value to judge: Prometheus answered no data or not one number,
    /// or the condition could not judge it. Never a pass.
    Inconclusive,
    /// No answer: Prometheus was unreachable, timed out, answered an error
    /// or refused the query. Never a pass.
    Error,
}

impl MeasurementPhase {
    /// Every phase.
    pub const ALL: [MeasurementPhase; 4] = [
        MeasurementPhase::Successful,
        MeasurementPhase::Failed,
        MeasurementPhase::Inconclusive,
        MeasurementPhase::Error,
    ];

    /// The name used in storage and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            MeasurementPhase::Successful => "SUCCESSFUL",
            MeasurementPhase::Failed => "FAILED",
            MeasurementPhase::Inconclusive => "INCONCLUSIVE",
            MeasurementPhase::Error => "ERROR",
        }
    }
}

impl std::str::FromStr for MeasurementPhase {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        MeasurementPhase::ALL
            .into_iter()
            .find(|phase| phase.as_str() == text)
            .ok_or_else(|| Error::Internal(format!("unknown measurement phase {text:?}")))
    }
}

/// One measurement of one analysis, as recorded with its rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The analysis measured.
    pub analysis: String,
    /// The rollout's step when it was taken, from 0.
    pub step: usize,
    /// How it came out.
    pub phase: MeasurementPhase,
    /// The query's value, when it answered one number.
    pub value: Option<f64>,
    /// The condition it was judged by.
    pub success_condition: String,
    /// Why it was inconclusive or an error, or the query as sent when it
    /// was neither.
    pub message: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// What a Prometheus server answered to one instant query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryAnswer {
    /// One number.
    Value(f64),
    /// An answer without one number to judge: no series, several, or NaN.
    NoData(String),
    /// No answer: unreachable, timed out, or a server error.
    Unanswered(String),
    /// The query itself is wrong (Prometheus's `bad_data`).
    Refused(String),
}

/// Where analyses' queries go: the Prometheus servers the deployment
/// configures, by name. Requests name a server, never an address, so no
/// caller can make the service fetch a URL of its choosing.
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Whether a server of this name is configured.
    fn knows(&self, server: &str) -> bool;
    /// The floor of an analysis's interval.
    fn min_interval(&self) -> Duration;
    /// One instant query.
    async fn query(&self, server: &str, query: &str) -> QueryAnswer;
}

/// Checks a rollout's analyses, its own (`analyses`) and each step's
/// (`steps[i].analyses`), against `source`'s servers and floor, and
/// renders every query with `facts` of the step it runs in: what the
/// caller then asks Prometheus to parse, as `(field, server, query)`.
pub fn validate_analyses(
    analyses: &[Analysis],
    steps: &[RolloutStep],
    facts: &dyn Fn(usize) -> QueryFacts,
    source: Option<&dyn MetricsSource>,
) -> Result<Vec<(String, String, String)>> {
    let declared: Vec<(String, &Analysis, Option<usize>)> = analyses
        .iter()
        .enumerate()
        .map(|(index, analysis)| (format!("analyses[{index}]"), analysis, None))
        .chain(steps.iter().enumerate().flat_map(|(step, declared)| {
            declared
                .analyses
                .iter()
                .enumerate()
                .map(move |(index, analysis)| {
                    (
                        format!("steps[{step}].analyses[{index}]"),
                        analysis,
                        Some(step),
                    )
                })
        }))
        .collect();
    if declared.len() > MAX_ANALYSES {
        return Err(Error::invalid(
            "analyses",
            format!(
                "{} analyses, at most {MAX_ANALYSES} are allowed in one rollout",
                declared.len()
            ),
        ));
    }
    let mut names = BTreeSet::new();
    let mut queries = Vec::with_capacity(declared.len());
    for (field, analysis, step) in declared {
        crate::domain::EntryName::parse(&format!("{field}.name"), &analysis.name)?;
        if !names.insert(analysis.name.as_str()) {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!(
                    "{} names another analysis of the rollout already",
                    analysis.name
                ),
            ));
        }
        let Some(source) = source else {
            return Err(Error::invalid(
                format!("{field}.prometheus"),
                "no Prometheus server is configured: analyses need one in the server's \
                 settings (rollouts.prometheus)",
            ));
        };
        if !source.knows(&analysis.prometheus) {
            return Err(Error::invalid(
                format!("{field}.prometheus"),
                format!(
                    "names {}, not a Prometheus server of the server's settings",
                    crate::domain::quoted(&analysis.prometheus)
                ),
            ));
        }
        let floor = source.min_interval();
        if analysis.interval < floor || analysis.interval > MAX_ANALYSIS_INTERVAL {
            return Err(Error::invalid(
                format!("{field}.interval"),
                format!(
                    "is {}, it must be {} to {}",
                    humantime::format_duration(analysis.interval),
                    humantime::format_duration(floor),
                    humantime::format_duration(MAX_ANALYSIS_INTERVAL)
                ),
            ));
        }
        for (name, text) in [
            ("query", &analysis.query),
            ("success_condition", &analysis.success_condition),
        ] {
            if text.len() > MAX_ANALYSIS_TEXT_BYTES {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!(
                        "is {} bytes, at most {MAX_ANALYSIS_TEXT_BYTES} are allowed",
                        text.len()
                    ),
                ));
            }
        }
        if analysis.query.trim().is_empty() {
            return Err(Error::invalid(format!("{field}.query"), "is empty"));
        }
        check_condition(
            &format!("{field}.success_condition"),
            &analysis.success_condition,
        )?;
        let facts = facts(step.unwrap_or(0));
        let query = render_query(&format!("{field}.query"), &analysis.query, &facts)?;
        queries.push((format!("{field}.query"), analysis.prometheus.clone(), query));
    }
    Ok(queries)
}

/// A measurement of `analysis` from what Prometheus answered.
pub fn measure(
    analysis: &Analysis,
    step: usize,
    query: &str,
    answer: QueryAnswer,
    now: DateTime<Utc>,
) -> Measurement {
    let (phase, value, message) = match answer {
        QueryAnswer::Value(value) => match evaluate(&analysis.success_condition, value) {
            Ok(true) => (MeasurementPhase::Successful, Some(value), query.to_owned()),
            Ok(false) => (MeasurementPhase::Failed, Some(value), query.to_owned()),
            Err(why) => (
                MeasurementPhase::Inconclusive,
                Some(value),
                format!("the condition {why}"),
            ),
        },
        QueryAnswer::NoData(why) => (MeasurementPhase::Inconclusive, None, why),
        QueryAnswer::Unanswered(why) | QueryAnswer::Refused(why) => {
            (MeasurementPhase::Error, None, why)
        }
    };
    Measurement {
        analysis: analysis.name.clone(),
        step,
        phase,
        value,
        success_condition: analysis.success_condition.clone(),
        message,
        taken_at: now,
    }
}

/// Where an analysis stands over its step's measurements.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Measuring.
    Running,
    /// `count` successful measurements within the limits: it passed and
    /// stops.
    Successful,
    /// More failed measurements than the failure limit: why.
    Failed(String),
    /// More inconclusive measurements than the inconclusive limit: why.
    Inconclusive(String),
    /// More errors in a row than the consecutive-error limit: why.
    Errored(String),
}

fn value_text(measurement: &Measurement) -> String {
    measurement
        .value
        .map_or_else(|| "no value".to_owned(), |value| value.to_string())
}

/// Judges `analysis` by its measurements of the current step, oldest
/// first.
pub fn judge(analysis: &Analysis, measurements: &[&Measurement]) -> Verdict {
    let count = |phase| {
        measurements
            .iter()
            .filter(|measurement| measurement.phase == phase)
            .count()
    };
    let failed = count(MeasurementPhase::Failed);
    if failed > analysis.failure_limit as usize {
        let last = measurements
            .iter()
            .rfind(|measurement| measurement.phase == MeasurementPhase::Failed)
            .expect("a failed measurement was counted");
        return Verdict::Failed(format!(
            "analysis {} failed: {failed} of {} measurements failed (at most {} allowed), \
             the last {} against `{}`",
            analysis.name,
            measurements.len(),
            analysis.failure_limit,
            value_text(last),
            last.success_condition
        ));
    }
    let errors_in_a_row = measurements
        .iter()
        .rev()
        .take_while(|measurement| measurement.phase == MeasurementPhase::Error)
        .count();
    if errors_in_a_row > analysis.consecutive_error_limit as usize {
        let last = measurements.last().expect("an error was counted");
        return Verdict::Errored(format!(
            "analysis {} could not measure: {errors_in_a_row} errors in a row (at most {} \
             allowed), the last: {}",
            analysis.name, analysis.consecutive_error_limit, last.message
        ));
    }
    let inconclusive = count(MeasurementPhase::Inconclusive);
    if inconclusive > analysis.inconclusive_limit as usize {
        let last = measurements
            .iter()
            .rfind(|measurement| measurement.phase == MeasurementPhase::Inconclusive)
            .expect("an inconclusive measurement was counted");
        return Verdict::Inconclusive(format!(
            "analysis {} was inconclusive: {inconclusive} of {} measurements had no value to \
             judge against `{}` (at most {} allowed), the last: {}",
            analysis.name,
            measurements.len(),
            last.success_condition,
            analysis.inconclusive_limit,
            last.message
        ));
    }
    if analysis.count > 0 && count(MeasurementPhase::Successful) >= analysis.count as usize {
        return Verdict::Successful;
    }
    Verdict::Running
}

impl Rollout {
    /// The analyses in force at the current step: the rollout's own and
    /// the step's.
    pub fn analyses_in_force(&self) -> impl Iterator<Item = &Analysis> {
        let step = self
            .steps
            .get(self.step)
            .map(|step| step.analyses.as_slice());
        self.analyses.iter().chain(step.unwrap_or_default())
    }

    /// The measurements that judge `analysis` now: the current step's
    /// since it started or the rollout last resumed.
    pub fn judged<'a>(
        &self,
        analysis: &Analysis,
        measurements: &'a [Measurement],
    ) -> Vec<&'a Measurement> {
        measurements
            .iter()
            .filter(|measurement| {
                measurement.analysis == analysis.name
                    && measurement.step == self.step
                    && measurement.taken_at >= self.step_started_at
            })
            .collect()
    }

    /// The analyses due for a measurement at `now`: running ones whose
    /// next point came (see [`next_due`]).
    pub fn due_analyses<'a>(
        &'a self,
        measurements: &[Measurement],
        now: DateTime<Utc>,
        slack: Duration,
    ) -> Vec<&'a Analysis> {
        self.analyses_in_force()
            .filter(|analysis| {
                let judged = self.judged(analysis, measurements);
                judge(analysis, &judged) == Verdict::Running
                    && now >= next_due(self.step_started_at, analysis.interval, slack, &judged)
            })
            .collect()
    }
}

/// When the next measurement after `judged` (oldest first, since `start`)
/// is due. Points fall on a grid, one `interval` after `start` and then
/// every interval, so a controller tick up to `slack` late does not push
/// the later measurements back. A measurement taken later than that past
/// its point (the server was down, the controller stalled) was taken at
/// once, and the grid starts again from it: an outage never makes an
/// analysis measure faster than its interval, nor catch up on the points
/// it missed.
fn next_due(
    start: DateTime<Utc>,
    interval: Duration,
    slack: Duration,
    judged: &[&Measurement],
) -> DateTime<Utc> {
    let interval = chrono::TimeDelta::from_std(interval).unwrap_or(chrono::TimeDelta::MAX);
    let slack = chrono::TimeDelta::from_std(slack).unwrap_or(chrono::TimeDelta::MAX);
    judged.iter().fold(start + interval, |due, measurement| {
        let point = match measurement.taken_at > due + slack {
            true => measurement.taken_at,
            false => due,
        };
        point + interval
    })
}

#[cfg(test)]
mod tests;
