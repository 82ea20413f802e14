//! `policyhub rollout start --analysis FILE --step-analysis STEP=FILE`:
//! analyses written in files, in the protobuf JSON mapping, reach the
//! rollout as the API's own; `rollout status` shows how they measure.
//! Against the real Prometheus of the analysis tests.

use policyhub::grpc::proto::RolloutState;

use crate::analysis::{ERROR_RATIO, Exporter, Prometheus, seed, server};
use crate::cli::policyhub;
use crate::helpers::Backend;
use crate::rollouts::until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_a_rollout_with_analyses_written_in_files() {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let app = server(Backend::Sqlite, &prometheus).await;
    seed(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // The whole rollout's: a YAML list. The second step's: one JSON object.
    let rollout_wide = file(
        "error-ratio.yaml",
        format!(
            "- name: error-ratio\n  query: '{ERROR_RATIO}'\n  successCondition: result < 0.05\n  \
             interval: 1s\n  count: 2\n"
        ),
    );
    let second_step = file(
        "errors-at-full.json",
        serde_json::json!({
            "name": "errors-at-full",
            "query": ERROR_RATIO,
            "successCondition": "result < 0.01",
            "interval": "1s",
            "count": 1,
        })
        .to_string(),
    );
    let misspelt = file(
        "misspelt.yaml",
        "name: x\nquery: vector(0)\nsucessCondition: result < 1\ninterval: 1s\n".into(),
    );
    let unparsable = file(
        "unparsable.yaml",
        "name: x\nquery: 'sum(rate(x[1s]'\nsuccessCondition: result < 1\ninterval: 1s\n".into(),
    );

    let start = |extra: &[&str]| {
        let mut args = vec![
            "rollout",
            "start",
            "team/limits@2",
            "--step",
            "50",
            "--step",
            "100",
        ];
        args.extend_from_slice(extra);
        policyhub(&app, &args)
    };
    // Each bad file or flag is refused naming what is wrong; none starts a
    // rollout.
    let before = app.db_state().await;
    for (extra, code, said) in [
        (vec!["--step-analysis", "3=x.json"], 2, "there are 2 steps"),
        (vec!["--step-analysis", "0=x.json"], 2, "STEP=FILE"),
        (vec!["--step-analysis", "x.json"], 2, "STEP=FILE"),
        (vec!["--analysis", &misspelt], 1, "sucessCondition"),
        (vec!["--analysis", "missing.yaml"], 1, "missing.yaml"),
        (vec!["--analysis", &unparsable], 1, "analyses[0].query"),
        (
            vec!["--step-analysis", &format!("1={unparsable}")],
            1,
            "steps[0].analyses[0].query",
        ),
    ] {
        let run = start(&extra);
        assert_eq!(run.code, code, "{extra:?}: {}", run.stderr);
        assert!(run.stderr.contains(said), "{extra:?}: {}", run.stderr);
    }
    assert_eq!(app.db_state().await, before, "nothing started");

    let started = start(&[
        "--analysis",
        &rollout_wide,
        "--step-analysis",
        &format!("2={second_step}"),
        "-o",
        "json",
    ])
    .json();
    assert_eq!(started["analyses"][0]["name"], "error-ratio");
    assert_eq!(started["analyses"][0]["interval"], "1s");
    assert_eq!(started["steps"][0].get("analyses"), None);
    assert_eq!(started["steps"][1]["analyses"][0]["name"], "errors-at-full");
    let id = started["id"].as_str().unwrap().to_owned();
    let completed = until(&app.policy, &id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    let at_full: Vec<_> = completed
        .measurements
        .iter()
        .filter(|measurement| measurement.step == 1)
        .map(|measurement| measurement.analysis.as_str())
        .collect();
    assert_eq!(
        at_full
            .iter()
            .filter(|name| **name == "error-ratio")
            .count(),
        2
    );
    assert_eq!(
        at_full
            .iter()
            .filter(|name| **name == "errors-at-full")
            .count(),
        1
    );
    let status = policyhub(&app, &["rollout", "status", "team", &id]);
    let text = status.success();
    assert!(
        text.contains(
            "analysis error-ratio (result < 0.05): 2 successful, 0 failed, 0 inconclusive, 0 errors; last 0 at"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "analysis errors-at-full (result < 0.01): 1 successful, 0 failed, 0 inconclusive, 0 errors; last 0 at"
        ),
        "{text}"
    );
}
