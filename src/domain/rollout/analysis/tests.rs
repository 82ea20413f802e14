//! The analyses' tests: validation, judging and the measurement grid.

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
    let due =
        |taken: &[Measurement]| next_due(start, interval, slack, &taken.iter().collect::<Vec<_>>());
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
