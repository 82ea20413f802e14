//! An archive carries each ended rollout's analysis measurements: a
//! rollout rolled back by an error-rate spike, measured by the real
//! Prometheus of the analysis tests, shows the same measurements on the
//! deployment that imported it; an archive written before measurements
//! were carried still verifies and imports, its rollouts without them.

use policyhub::grpc::proto::{self, RolloutState};

use crate::analysis::{Exporter, Prometheus, error_ratio, seed, server, start_measured};
use crate::archive::resealed;
use crate::cli::policyhub;
use crate::helpers::{Backend, TestApp, spawn_app};
use crate::rollouts::{get, until};

crate::on_both_backends_given_the_backend!(an_ended_rollouts_measurements_move_with_it);

fn import(app: &TestApp, archive: &str) -> crate::cli::Run {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("archive.jsonl");
    std::fs::write(&file, archive).unwrap();
    policyhub(app, &["verify-log", "-f", &file.display().to_string()]).success();
    policyhub(app, &["import", &file.display().to_string()])
}

async fn an_ended_rollouts_measurements_move_with_it(backend: Backend) {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let source = server(backend, &prometheus).await;
    seed(&source).await;
    let started = start_measured(&source, error_ratio(0, 1)).await;
    until(&source.policy, &started.id, |rollout| {
        rollout.measurements.len() >= 2
    })
    .await;
    exporter.spike();
    let ended = until(&source.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::RolledBack
    })
    .await;
    let phases: Vec<_> = ended.measurements.iter().map(|m| m.phase()).collect();
    assert!(
        phases.contains(&proto::MeasurementPhase::Successful)
            && phases.contains(&proto::MeasurementPhase::Failed),
        "{phases:?}"
    );
    let archive = policyhub(&source, &["export", "team"]).success().to_owned();

    let target = spawn_app(backend).await;
    import(&target, &archive).success();
    let moved = get(&target.policy, &started.id).await;
    assert_eq!(moved.state(), RolloutState::RolledBack);
    assert_eq!(moved.measurements, ended.measurements);

    // Written before measurements were carried: the same archive without
    // them.
    assert!(archive.contains("\"measurements\""), "{archive}");
    let older = resealed(&archive, |lines| {
        for line in lines.iter_mut() {
            if let Some(rollout) = line.get_mut("rollout").and_then(|r| r.as_object_mut()) {
                rollout.remove("measurements");
            }
        }
    });
    assert!(!older.contains("\"measurements\""), "{older}");
    let older_target = spawn_app(backend).await;
    import(&older_target, &older).success();
    let without = get(&older_target.policy, &started.id).await;
    assert_eq!(without.state(), RolloutState::RolledBack);
    assert!(
        without.measurements.is_empty(),
        "{:?}",
        without.measurements
    );
}
