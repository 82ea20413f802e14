//! Analyses when Prometheus misbehaves (docs/src/guides/rollout-analysis.md,
//! "How an analysis is judged"): no data never passes, an outage of the
//! server never makes measurements come faster than their interval, a
//! silent, a refusing or an oversized Prometheus is an error (said as
//! such, and paused at the consecutive-error limit), and one slow
//! Prometheus holds up no other rollout. A real Prometheus answers where
//! it can be made to; the faults it cannot be made to show (an answer
//! that never comes, one of a megabyte) come from a server of the test's
//! own that speaks Prometheus's query API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use policyhub::config::PrometheusServer;
use policyhub::grpc::proto::{self, MeasurementPhase, RolloutState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::analysis::{Exporter, Prometheus, error_ratio, seed, start_measured};
use crate::helpers::{Backend, TestApp, TestDatabase, spawn_on};
use crate::rollouts::{get, start_request, step, until};

/// The controller's tick in these tests.
const TICK: Duration = Duration::from_millis(100);
/// Every analysis here measures once a second.
const INTERVAL: Duration = Duration::from_secs(1);

crate::on_both_backends_given_the_backend!(
    an_analysis_whose_query_answers_no_data_never_passes,
    after_the_server_was_down_measurements_keep_their_interval,
    a_silent_or_oversized_answer_is_an_error_said_as_such_and_pauses_at_its_limit,
    a_silent_prometheus_holds_up_no_other_rollout,
);

/// What the fake Prometheus answers now.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// One sample of this value.
    Value(f64),
    /// Nothing: the connection is held open, unanswered.
    Silent,
    /// A vector of one sample, padded past a megabyte.
    Huge,
}

/// A server answering `/api/v1/query` as Prometheus does, with what the
/// test sets.
struct FakePrometheus {
    url: String,
    answer: Arc<Mutex<Answer>>,
}

impl FakePrometheus {
    async fn start(answer: Answer) -> FakePrometheus {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(answer));
        let answer = shared.clone();
        tokio::spawn(async move {
            while let Ok((mut connection, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    read_request(&mut connection).await;
                    let now = *answer.lock().unwrap();
                    let body = match now {
                        Answer::Value(value) => vector(&value.to_string(), ""),
                        Answer::Huge => vector("0", &"x".repeat(1024 * 1024)),
                        Answer::Silent => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    connection.write_all(response.as_bytes()).await.ok();
                    connection.shutdown().await.ok();
                });
            }
        });
        FakePrometheus {
            url,
            answer: shared,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn server(&self) -> PrometheusServer {
        PrometheusServer {
            url: self.url.clone(),
        }
    }
}

/// Reads one request: its head, then as many bytes as it declares.
async fn read_request(connection: &mut tokio::net::TcpStream) {
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(n) = connection.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        read.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&read);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if read.len() >= end + 4 + length {
                return;
            }
        }
    }
}

/// Prometheus's answer of a vector of one sample, its series labelled
/// with `padding`.
fn vector(value: &str, padding: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"pad":"{padding}"}},"value":[1700000000,"{value}"]}}]}}}}"#
    )
}

/// A server whose analyses ask the servers of `prometheus` by name, at
/// most once a second, waiting `timeout` for an answer.
async fn server_on(
    database: TestDatabase,
    prometheus: &[(&str, PrometheusServer)],
    timeout: Duration,
) -> TestApp {
    let servers = prometheus
        .iter()
        .map(|(name, server)| (name.to_string(), server.clone()))
        .collect();
    spawn_on(database, move |settings| {
        settings.rollouts.tick_interval = TICK;
        settings.rollouts.prometheus = servers;
        settings.rollouts.min_analysis_interval = INTERVAL;
        settings.rollouts.analysis_timeout = timeout;
    })
    .await
}

/// The measurements of `rollout`, of the analysis `name`.
fn of<'a>(rollout: &'a proto::Rollout, name: &str) -> Vec<&'a proto::AnalysisMeasurement> {
    rollout
        .measurements
        .iter()
        .filter(|measurement| measurement.analysis == name)
        .collect()
}

fn taken_at(measurement: &proto::AnalysisMeasurement) -> DateTime<Utc> {
    let at = measurement.taken_at.unwrap();
    DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap()
}

/// A query a real Prometheus answers with no series, three times allowed
/// to be inconclusive, with a count of 3 and a step that needs no bake:
/// the analysis never passes on inconclusive measurements alone, and the
/// fourth pauses the rollout, which never completes.
async fn an_analysis_whose_query_answers_no_data_never_passes(backend: Backend) {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let app = crate::analysis::server(backend, &prometheus).await;
    seed(&app).await;
    let mut request = start_request(vec![step(100, Duration::ZERO)]);
    request.analyses = vec![proto::RolloutAnalysis {
        query: "sum(policyhub_test_absent_total{policy=~\"{{ policies }}\"})".into(),
        inconclusive_limit: 3,
        ..error_ratio(3, 0)
    }];
    let started = app
        .policy
        .clone()
        .start_rollout(request)
        .await
        .expect("start")
        .into_inner();
    let ended = until(&app.policy, &started.id, |rollout| {
        matches!(
            rollout.state(),
            RolloutState::Paused | RolloutState::Completed
        )
    })
    .await;
    assert_eq!(ended.state(), RolloutState::Paused, "{ended:?}");
    let phases: Vec<_> = ended.measurements.iter().map(|m| m.phase()).collect();
    assert_eq!(phases, [MeasurementPhase::Inconclusive; 4]);
    assert!(
        ended
            .halted_because
            .contains("4 of 4 measurements had no value to judge"),
        "{}",
        ended.halted_because
    );
    assert!(
        ended.halted_because.contains("no series"),
        "{}",
        ended.halted_because
    );
    assert_eq!(app.get_active("team", "limits").await.unwrap().version, 1);
}

/// The server stopped for four intervals, then started again: one
/// measurement at once, then every interval, never the missed ones in a
/// burst.
async fn after_the_server_was_down_measurements_keep_their_interval(backend: Backend) {
    let prometheus = FakePrometheus::start(Answer::Value(0.0)).await;
    let servers = [("default", prometheus.server())];
    let app = server_on(TestDatabase::new(backend).await, &servers, INTERVAL).await;
    seed(&app).await;
    let started = start_measured(&app, error_ratio(0, 0)).await;
    until(&app.policy, &started.id, |rollout| {
        rollout.measurements.len() >= 2
    })
    .await;
    let database = app.stop().await;
    tokio::time::sleep(INTERVAL * 4).await;
    let restarted_at = Utc::now();
    let app = server_on(database, &servers, INTERVAL).await;
    let measured = until(&app.policy, &started.id, |rollout| {
        of(rollout, "error-ratio")
            .iter()
            .filter(|measurement| taken_at(measurement) > restarted_at)
            .count()
            >= 4
    })
    .await;
    let after: Vec<_> = of(&measured, "error-ratio")
        .into_iter()
        .map(taken_at)
        .filter(|at| *at > restarted_at)
        .collect();
    let first = after[0] - restarted_at;
    assert!(
        first < chrono::TimeDelta::from_std(INTERVAL).unwrap(),
        "the first measurement after the outage came {first} after the restart"
    );
    // A tick may take a measurement up to a tick late and the next on
    // time: the interval, less a tick, is the floor.
    let floor = chrono::TimeDelta::from_std(INTERVAL - TICK).unwrap();
    for pair in after.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= floor,
            "measurements {gap} apart after the outage: {after:?}"
        );
    }
}

/// An answer over the size cap, then no answer within the timeout: each
/// an error saying which, and the third error in a row (the limit is 2)
/// pauses the rollout.
async fn a_silent_or_oversized_answer_is_an_error_said_as_such_and_pauses_at_its_limit(
    backend: Backend,
) {
    let prometheus = FakePrometheus::start(Answer::Value(0.0)).await;
    let servers = [("default", prometheus.server())];
    let app = server_on(TestDatabase::new(backend).await, &servers, INTERVAL).await;
    seed(&app).await;
    let analysis = proto::RolloutAnalysis {
        consecutive_error_limit: Some(2),
        ..error_ratio(0, 0)
    };
    let started = start_measured(&app, analysis).await;
    until(&app.policy, &started.id, |rollout| {
        !rollout.measurements.is_empty()
    })
    .await;
    prometheus.answer(Answer::Huge);
    let oversized = until(&app.policy, &started.id, |rollout| {
        rollout.measurements.last().unwrap().phase() == MeasurementPhase::Error
    })
    .await;
    let error = oversized.measurements.last().unwrap();
    assert!(
        error.message.contains("answered more than 262144 bytes"),
        "{error:?}"
    );
    assert_eq!(error.value, None);
    prometheus.answer(Answer::Silent);
    let paused = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Paused
    })
    .await;
    let last = paused.measurements.last().unwrap();
    assert_eq!(last.phase(), MeasurementPhase::Error);
    assert_eq!(
        last.message, "prometheus default timed out after 1s",
        "{last:?}"
    );
    assert!(
        paused
            .halted_because
            .contains("could not measure: 3 errors in a row (at most 2 allowed)"),
        "{}",
        paused.halted_because
    );
}

/// Two rollouts, one judged by a Prometheus that stops answering (a query
/// waits out its 5 s timeout): the other is measured every interval all
/// the while.
async fn a_silent_prometheus_holds_up_no_other_rollout(backend: Backend) {
    let healthy = FakePrometheus::start(Answer::Value(0.0)).await;
    let slow = FakePrometheus::start(Answer::Value(0.0)).await;
    let servers = [("default", healthy.server()), ("slow", slow.server())];
    let app = server_on(
        TestDatabase::new(backend).await,
        &servers,
        Duration::from_secs(5),
    )
    .await;
    seed(&app).await;
    app.release("team", "quota", serde_json::json!({"max": 1}), true)
        .await;
    app.release("team", "quota", serde_json::json!({"max": 2}), false)
        .await;
    let measured = start_measured(&app, error_ratio(0, 0)).await;
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.targets[0].name = "quota".into();
    request.analyses = vec![proto::RolloutAnalysis {
        name: "slow".into(),
        prometheus: "slow".into(),
        consecutive_error_limit: Some(100),
        ..error_ratio(0, 0)
    }];
    let stalled = app
        .policy
        .clone()
        .start_rollout(request)
        .await
        .expect("start")
        .into_inner();
    until(&app.policy, &stalled.id, |rollout| {
        !rollout.measurements.is_empty()
    })
    .await;
    slow.answer(Answer::Silent);
    // The slow analysis's next query is in flight from here on.
    tokio::time::sleep(INTERVAL * 2).await;
    let before = get(&app.policy, &measured.id).await.measurements.len();
    tokio::time::sleep(INTERVAL * 5).await;
    let rollout = get(&app.policy, &measured.id).await;
    let taken = rollout.measurements.len() - before;
    assert!(
        taken >= 4,
        "{taken} measurements in 5 s while another rollout's Prometheus was silent"
    );
    assert_eq!(rollout.state(), RolloutState::Running);
}
