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
mod tests {
    use super::*;
    use crate::domain::rollout::tests::{rollout, step};

    #[derive(Debug)]
    struct Servers;

    #[async_trait::async_trait]
    impl MetricsSource for Servers {
        fn knows(&self, server: &str) -> bool {
            server == DEFAULT_PROMETHEUS
        }
        fn min_interval(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn query(&self, _server: &str, _query: &str) -> QueryAnswer {
            QueryAnswer::NoData("no data".into())
        }
    }

    pub(crate) fn analysis(name: &str) -> Analysis {
        Analysis {
            name: name.into(),
            prometheus: DEFAULT_PROMETHEUS.into(),
            query: "sum(rate(errors{policy=~\"{{ policies }}\",version=\"{{ candidate }}\"}[5s]))"
                .into(),
            success_condition: "result < 0.01".into(),
            interval: Duration::from_secs(1),
            count: 0,
            failure_limit: 1,
            inconclusive_limit: 0,
            consecutive_error_limit: DEFAULT_CONSECUTIVE_ERROR_LIMIT,
        }
    }

    fn validate(
        plan: &Rollout,
        source: Option<&dyn MetricsSource>,
    ) -> Result<Vec<(String, String, String)>> {
        let facts = |step| QueryFacts::of(plan, step);
        validate_analyses(&plan.analyses, &plan.steps, &facts, source)
    }

    fn field_of(result: Result<Vec<(String, String, String)>>) -> String {
        match result {
            Err(Error::InvalidArgument(violations)) => violations[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queries_render_the_rollouts_facts_and_name_only_those() {
        let mut plan = rollout(vec![step(10, 0), step(100, 0)]);
        plan.analyses = vec![analysis("errors")];
        let queries = validate(&plan, Some(&Servers)).unwrap();
        assert_eq!(
            queries[0].2,
            "sum(rate(errors{policy=~\"limits\",version=\"2\"}[5s]))"
        );
        let facts = QueryFacts::of(&plan, 1);
        assert_eq!(
            render_query(
                "q",
                "{{ namespace }} {{ baseline }} {{ step }} {{ percentage }}",
                &facts
            )
            .unwrap(),
            "team 1 2 100"
        );
        plan.analyses[0].query = "up{job=\"{{ canary }}\"}".into();
        let refused = validate(&plan, Some(&Servers));
        match &refused {
            Err(Error::InvalidArgument(violations)) => {
                assert_eq!(violations[0].field, "analyses[0].query");
                assert!(violations[0].description.contains("canary"), "{refused:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_analyses_are_refused_naming_the_field() {
        let mut plan = rollout(vec![step(10, 0), step(100, 0)]);
        type Spoil = Box<dyn Fn(&mut Analysis)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (
                Box::new(|a| a.success_condition = "result <".into()),
                "analyses[0].success_condition",
            ),
            (
                Box::new(|a| a.success_condition = "latency < 1".into()),
                "analyses[0].success_condition",
            ),
            (
                Box::new(|a| a.success_condition = String::new()),
                "analyses[0].success_condition",
            ),
            (
                Box::new(|a| a.interval = Duration::from_millis(500)),
                "analyses[0].interval",
            ),
            (
                Box::new(|a| a.prometheus = "elsewhere".into()),
                "analyses[0].prometheus",
            ),
            (Box::new(|a| a.name = "Bad Name".into()), "analyses[0].name"),
            (
                Box::new(|a| a.query = "{{ step ".into()),
                "analyses[0].query",
            ),
        ];
        for (spoil, field) in cases {
            let mut spoiled = analysis("errors");
            spoil(&mut spoiled);
            plan.analyses = vec![spoiled];
            assert_eq!(field_of(validate(&plan, Some(&Servers))), field);
        }
        plan.analyses = vec![analysis("errors")];
        plan.steps[1].analyses = vec![analysis("errors")];
        assert_eq!(
            field_of(validate(&plan, Some(&Servers))),
            "steps[1].analyses[0].name"
        );
        plan.steps[1].analyses.clear();
        assert_eq!(field_of(validate(&plan, None)), "analyses[0].prometheus");
    }

    #[test]
    fn limits_fail_pause_or_pass_an_analysis() {
        let now = Utc::now();
        let declared = Analysis {
            count: 3,
            ..analysis("errors")
        };
        let taken = |value: Option<f64>| {
            let answer = value.map_or(
                QueryAnswer::Unanswered("refused".into()),
                QueryAnswer::Value,
            );
            measure(&declared, 0, "q", answer, now)
        };
        let ok = taken(Some(0.0));
        let bad = taken(Some(0.5));
        let none = measure(
            &declared,
            0,
            "q",
            QueryAnswer::NoData("no series".into()),
            now,
        );
        assert_eq!(none.phase, MeasurementPhase::Inconclusive);
        assert_eq!(taken(None).phase, MeasurementPhase::Error);
        assert_eq!(judge(&declared, &[&ok, &bad]), Verdict::Running);
        match judge(&declared, &[&bad, &ok, &bad]) {
            Verdict::Failed(why) => {
                assert!(why.contains("0.5 against `result < 0.01`"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(&declared, &[&ok, &none]),
            Verdict::Inconclusive(_)
        ));
        assert_eq!(judge(&declared, &[&ok, &bad, &ok]), Verdict::Running);
        assert_eq!(
            judge(&declared, &[&ok, &bad, &ok, &ok]),
            Verdict::Successful
        );
    }

    #[test]
    fn only_successful_measurements_pass_an_analysis() {
        let now = Utc::now();
        let declared = Analysis {
            count: 3,
            inconclusive_limit: 3,
            ..analysis("errors")
        };
        let none = measure(
            &declared,
            0,
            "q",
            QueryAnswer::NoData("the query answered no series".into()),
            now,
        );
        let ok = measure(&declared, 0, "q", QueryAnswer::Value(0.0), now);
        assert_eq!(judge(&declared, &[&none, &none, &none]), Verdict::Running);
        assert!(matches!(
            judge(&declared, &[&none, &none, &none, &none]),
            Verdict::Inconclusive(_)
        ));
        assert_eq!(
            judge(&declared, &[&none, &ok, &none, &ok, &none, &ok]),
            Verdict::Successful
        );
    }

    #[test]
    fn errors_in_a_row_beyond_their_limit_stop_an_analysis_and_a_success_resets_them() {
        let now = Utc::now();
        let declared = Analysis {
            count: 3,
            ..analysis("errors")
        };
        let error = measure(
            &declared,
            0,
            "q",
            QueryAnswer::Unanswered("prometheus default timed out after 5s".into()),
            now,
        );
        let ok = measure(&declared, 0, "q", QueryAnswer::Value(0.0), now);
        let four = [&error, &error, &error, &error];
        assert_eq!(judge(&declared, &four), Verdict::Running);
        let five = [&error, &error, &error, &error, &error];
        match judge(&declared, &five) {
            Verdict::Errored(why) => {
                assert!(why.contains("5 errors in a row (at most 4"), "{why}");
                assert!(why.contains("timed out after 5s"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let broken = [&error, &error, &error, &ok, &error, &error, &error, &error];
        assert_eq!(judge(&declared, &broken), Verdict::Running);
        let none = Analysis {
            consecutive_error_limit: 0,
            ..declared.clone()
        };
        assert!(matches!(judge(&none, &[&error]), Verdict::Errored(_)));
    }

    #[test]
    fn an_outage_measures_once_then_keeps_the_interval_and_a_late_tick_keeps_the_grid() {
        let start = Utc::now();
        let second = chrono::TimeDelta::seconds(1);
        let millis = chrono::TimeDelta::milliseconds;
        let interval = Duration::from_secs(1);
        let slack = Duration::from_millis(100);
        let declared = analysis("errors");
        let at = |when| measure(&declared, 0, "q", QueryAnswer::Value(0.0), when);
        let due = |taken: &[Measurement]| {
            next_due(start, interval, slack, &taken.iter().collect::<Vec<_>>())
        };
        assert_eq!(due(&[]), start + second);
        // A tick 80 ms late keeps the grid.
        assert_eq!(due(&[at(start + millis(1080))]), start + second * 2);
        // Down from 1.05 s to 5.3 s: once at 5.3 s, then every second from
        // there, never the missed points in a burst.
        let mut taken = vec![at(start + millis(1050)), at(start + millis(5300))];
        assert_eq!(due(&taken), start + millis(6300));
        taken.push(at(start + millis(6320)));
        assert_eq!(due(&taken), start + millis(7300));
    }

    #[test]
    fn a_failed_analysis_fails_the_tick_an_inconclusive_one_pauses_and_a_count_holds_the_step() {
        use crate::domain::rollout::{Tick, tick};
        let mut plan = rollout(vec![step(10, 0), step(100, 0)]);
        plan.steps[0].analyses = vec![Analysis {
            count: 2,
            ..analysis("errors")
        }];
        let declared = plan.steps[0].analyses[0].clone();
        let now = plan.step_started_at + chrono::TimeDelta::seconds(1);
        let taken = |answer| measure(&declared, 0, "q", answer, now);
        assert_eq!(tick(&plan, &[], &[], now), Tick::Wait);
        let ok = taken(QueryAnswer::Value(0.0));
        assert_eq!(tick(&plan, &[], std::slice::from_ref(&ok), now), Tick::Wait);
        assert_eq!(
            tick(&plan, &[], &[ok.clone(), ok.clone()], now),
            Tick::Advance
        );
        let bad = taken(QueryAnswer::Value(0.2));
        assert!(matches!(
            tick(&plan, &[], &[bad.clone(), bad], now),
            Tick::Fail(_)
        ));
        let none = taken(QueryAnswer::NoData("the query answered no series".into()));
        match tick(&plan, &[], &[ok, none], now) {
            Tick::Pause(why) => assert!(why.contains("no series"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_analysis_is_due_an_interval_after_its_last_measurement() {
        let mut plan = rollout(vec![step(10, 0), step(100, 0)]);
        plan.analyses = vec![analysis("errors")];
        plan.steps[1].analyses = vec![analysis("latency")];
        let start = plan.step_started_at;
        let second = chrono::TimeDelta::seconds(1);
        let slack = Duration::from_millis(100);
        assert!(plan.due_analyses(&[], start, slack).is_empty());
        let due: Vec<_> = plan.due_analyses(&[], start + second, slack);
        assert_eq!(due.len(), 1);
        let taken = measure(
            &plan.analyses[0],
            0,
            "q",
            QueryAnswer::Value(0.0),
            start + second,
        );
        assert!(
            plan.due_analyses(std::slice::from_ref(&taken), start + second, slack)
                .is_empty()
        );
        plan.step = 1;
        let names: Vec<_> = plan
            .due_analyses(&[taken], start + second * 2, slack)
            .into_iter()
            .map(|analysis| analysis.name.as_str())
            .collect();
        assert_eq!(names, ["errors", "latency"]);
    }
}
