//! Rollouts judged by the service's own metrics
//! (docs/src/guides/rollout-analysis.md): a real Prometheus (Debian's
//! `prometheus`, which `./scripts/test` installs) scrapes, every second, an
//! exporter the test controls, counting the candidate's requests and
//! errors; the server's analyses query that Prometheus.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

use policyhub::config::{Limits, PrometheusServer};
use policyhub::domain::rollout::{MAX_ALERTS, MAX_ANALYSES};
use policyhub::grpc::proto::{self, MeasurementPhase, RolloutState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tonic::Code;

use crate::helpers::{Backend, TestApp, TestDatabase, bundles_of, expect_code, next_message};
use crate::rollouts::{get, open_runtimes, start_request, step, until};

/// The controller's tick in these tests.
const TICK: Duration = Duration::from_millis(100);
/// Every analysis here measures once a second, the floor the tests set.
const INTERVAL: Duration = Duration::from_secs(1);

/// The candidate's error ratio over the last three seconds of scrapes.
pub(crate) const ERROR_RATIO: &str = "sum(rate(service_errors_total{policy=~\"{{ policies }}\",\
     version=\"{{ candidate }}\"}[3s])) / sum(rate(service_requests_total{policy=~\"{{ policies }}\",\
     version=\"{{ candidate }}\"}[3s]))";

crate::on_both_backends_given_the_backend!(
    bad_analyses_are_refused_naming_the_field_and_nothing_starts,
    a_healthy_canary_is_promoted_step_by_step,
    an_error_rate_spike_rolls_the_cohort_back_within_the_bound,
    a_prometheus_that_stops_answering_pauses_the_rollout,
    a_retried_start_is_replayed_without_asking_prometheus,
);

/// What the exporter counts and when Prometheus first saw the spike.
#[derive(Default)]
struct Counters {
    requests: u64,
    errors: u64,
    /// When the first scrape during the spike was served.
    first_spike_scrape: Option<Instant>,
}

/// An exporter of the candidate's request and error counters: every
/// 100 ms ten more requests, and as many errors while spiking.
pub(crate) struct Exporter {
    address: std::net::SocketAddr,
    counters: Arc<Mutex<Counters>>,
    spiking: Arc<AtomicBool>,
}

impl Exporter {
    pub(crate) async fn start() -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counters = Arc::new(Mutex::new(Counters::default()));
        let spiking = Arc::new(AtomicBool::new(false));
        let (counting, spike) = (counters.clone(), spiking.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(100));
            loop {
                ticker.tick().await;
                let mut counters = counting.lock().unwrap();
                counters.requests += 10;
                if spike.load(Ordering::SeqCst) {
                    counters.errors += 10;
                }
            }
        });
        let (serving, spike) = (counters.clone(), spiking.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut connection, _)) = listener.accept().await else {
                    continue;
                };
                let (counters, spike) = (serving.clone(), spike.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match connection.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let body = {
                        let mut counters = counters.lock().unwrap();
                        if spike.load(Ordering::SeqCst) && counters.first_spike_scrape.is_none() {
                            counters.first_spike_scrape = Some(Instant::now());
                        }
                        format!(
                            "# TYPE service_requests_total counter\n\
                             service_requests_total{{policy=\"limits\",version=\"2\"}} {}\n\
                             # TYPE service_errors_total counter\n\
                             service_errors_total{{policy=\"limits\",version=\"2\"}} {}\n",
                            counters.requests, counters.errors
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    connection.write_all(response.as_bytes()).await.ok();
                    connection.shutdown().await.ok();
                });
            }
        });
        Exporter {
            address,
            counters,
            spiking,
        }
    }

    /// Starts the spike.
    pub(crate) fn spike(&self) {
        self.spiking.store(true, Ordering::SeqCst);
    }

    fn first_spike_scrape(&self) -> Option<Instant> {
        self.counters.lock().unwrap().first_spike_scrape
    }
}

/// A Prometheus server scraping the exporter every second.
pub(crate) struct Prometheus {
    url: String,
    process: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub(crate) async fn start(exporter: &Exporter) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: service\n    static_configs:\n\
                 \x20     - targets: ['{}']\n",
                exporter.address
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "prometheus runs: ./scripts/test installs it (Debian: apt-get install prometheus)",
            );
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            process,
            _dir: dir,
        };
        // Ready, and the candidate's ratio has a value: two scrapes at least.
        let client = reqwest::Client::new();
        let query = ERROR_RATIO
            .replace("{{ policies }}", "limits")
            .replace("{{ candidate }}", "2");
        for _ in 0..200 {
            let answered = client
                .get(format!("{}/api/v1/query", prometheus.url))
                .query(&[("query", query.as_str())])
                .send()
                .await;
            if let Ok(answered) = answered
                && let Ok(body) = answered.json::<serde_json::Value>().await
                && body["data"]["result"][0]["value"][1].is_string()
            {
                return prometheus;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prometheus did not answer the ratio within 20 s");
    }

    async fn stop(&mut self) {
        self.process.kill().await.expect("stop prometheus");
    }
}

/// A server whose analyses ask `prometheus`, measuring at most once a
/// second.
pub(crate) async fn server(backend: Backend, prometheus: &Prometheus) -> TestApp {
    let url = prometheus.url.clone();
    crate::helpers::spawn_on(TestDatabase::new(backend).await, move |settings| {
        settings.rollouts.tick_interval = TICK;
        settings.rollouts.prometheus = [("default".to_string(), PrometheusServer { url })].into();
        settings.rollouts.min_analysis_interval = INTERVAL;
        settings.rollouts.analysis_timeout = Duration::from_secs(1);
    })
    .await
}

/// team/limits: version 1 active, version 2 published.
pub(crate) async fn seed(app: &TestApp) {
    app.release("team", "limits", serde_json::json!({"max": 1}), true)
        .await;
    app.release("team", "limits", serde_json::json!({"max": 2}), false)
        .await;
}

/// The error-ratio analysis: below 5 % passes.
pub(crate) fn error_ratio(count: u32, failure_limit: u32) -> proto::RolloutAnalysis {
    proto::RolloutAnalysis {
        name: "error-ratio".into(),
        prometheus: String::new(),
        query: ERROR_RATIO.into(),
        success_condition: "result < 0.05".into(),
        interval: Some(INTERVAL.try_into().unwrap()),
        count,
        failure_limit,
        inconclusive_limit: 0,
        consecutive_error_limit: None,
    }
}

/// Starts a rollout of team/limits version 2 to every runtime, baking an
/// hour, measured by `analysis`.
pub(crate) async fn start_measured(
    app: &TestApp,
    analysis: proto::RolloutAnalysis,
) -> proto::Rollout {
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.analyses = vec![analysis];
    app.policy
        .clone()
        .start_rollout(request)
        .await
        .expect("start")
        .into_inner()
}

async fn bad_analyses_are_refused_naming_the_field_and_nothing_starts(backend: Backend) {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let app = server(backend, &prometheus).await;
    seed(&app).await;
    let before = app.db_state().await;
    let spoiled = |spoil: &dyn Fn(&mut proto::RolloutAnalysis)| {
        let mut analysis = error_ratio(0, 0);
        spoil(&mut analysis);
        let mut request = start_request(vec![step(100, Duration::from_secs(60))]);
        request.analyses = vec![analysis];
        request
    };
    let cases: Vec<(proto::StartRolloutRequest, &str, &str)> = vec![
        (
            spoiled(&|a| a.query = "sum(rate(service_errors_total[3s]".into()),
            "analyses[0].query",
            "Prometheus default cannot run it",
        ),
        (
            spoiled(&|a| a.success_condition = "result <".into()),
            "analyses[0].success_condition",
            "does not parse",
        ),
        (
            spoiled(&|a| a.interval = Some(Duration::from_millis(200).try_into().unwrap())),
            "analyses[0].interval",
            "it must be 1s to",
        ),
        (
            spoiled(&|a| a.query = "service_errors_total{version=\"{{ canary }}\"}".into()),
            "analyses[0].query",
            "canary",
        ),
        (
            spoiled(&|a| a.prometheus = "http://169.254.169.254".into()),
            "analyses[0].prometheus",
            "not a Prometheus server of the server's settings",
        ),
        (
            {
                let mut request = start_request(vec![step(100, Duration::from_secs(60))]);
                let mut analysis = error_ratio(0, 0);
                analysis.success_condition = "error_rate < 0.01".into();
                request.steps[0].analyses = vec![analysis];
                request
            },
            "steps[0].analyses[0].success_condition",
            "error_rate",
        ),
        (
            {
                let mut request = start_request(vec![step(100, Duration::from_secs(60))]);
                request.analyses = (0..=MAX_ANALYSES)
                    .map(|index| proto::RolloutAnalysis {
                        name: format!("a{index}"),
                        ..error_ratio(0, 0)
                    })
                    .collect();
                request
            },
            "analyses",
            "21 analyses, at most 20 are allowed in one rollout",
        ),
    ];
    for (request, field, said) in cases {
        let refused = app.policy.clone().start_rollout(request).await;
        let status = refused.as_ref().err().cloned();
        let message = expect_code(refused, Code::InvalidArgument);
        assert!(message.contains(said), "{field}: {message}");
        let details = tonic_types::StatusExt::get_error_details(&status.unwrap());
        let violations = details
            .bad_request()
            .expect("a BadRequest")
            .field_violations
            .clone();
        assert_eq!(violations[0].field, field, "{message}");
    }
    assert_eq!(app.db_state().await, before, "nothing started");
    let listed = app
        .policy
        .clone()
        .list_rollouts(proto::ListRolloutsRequest {
            namespace: "team".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.rollouts.is_empty(), "{listed:?}");
}

async fn a_healthy_canary_is_promoted_step_by_step(backend: Backend) {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let app = server(backend, &prometheus).await;
    seed(&app).await;
    let mut request = start_request(vec![step(50, Duration::ZERO), step(100, Duration::ZERO)]);
    // Two passing measurements hold each step.
    request.analyses = vec![error_ratio(2, 0)];
    let started = app
        .policy
        .clone()
        .start_rollout(request)
        .await
        .expect("start")
        .into_inner();
    assert_eq!(started.analyses[0].name, "error-ratio");
    let advanced = until(&app.policy, &started.id, |rollout| rollout.step == 1).await;
    let first_step: Vec<_> = advanced
        .measurements
        .iter()
        .filter(|measurement| measurement.step == 0)
        .collect();
    assert_eq!(first_step.len(), 2, "{:?}", advanced.measurements);
    let completed = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Completed
    })
    .await;
    assert_eq!(
        completed.measurements.len(),
        4,
        "{:?}",
        completed.measurements
    );
    for measurement in &completed.measurements {
        assert_eq!(measurement.phase(), MeasurementPhase::Successful);
        assert_eq!(measurement.value, Some(0.0));
        assert_eq!(measurement.success_condition, "result < 0.05");
        assert!(
            measurement.message.contains("version=\"2\""),
            "the query as sent, with the candidate: {}",
            measurement.message
        );
    }
    // One interval at least between a step's measurements.
    let taken: Vec<_> = completed
        .measurements
        .iter()
        .map(|measurement| {
            let at = measurement.taken_at.unwrap();
            at.seconds as f64 + at.nanos as f64 / 1e9
        })
        .collect();
    assert!(taken[1] - taken[0] >= 0.5, "{taken:?}");
    // The completion is committed; the index serving GetActive applies it
    // a moment after.
    let started = Instant::now();
    while app.get_active("team", "limits").await.unwrap().version != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the completed rollout's version is not active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_error_rate_spike_rolls_the_cohort_back_within_the_bound(backend: Backend) {
    let exporter = Exporter::start().await;
    let prometheus = Prometheus::start(&exporter).await;
    let app = server(backend, &prometheus).await;
    seed(&app).await;
    let mut fleet = open_runtimes(&app.bundle, 1).await;
    let failure_limit = 1;
    let started = start_measured(&app, error_ratio(0, failure_limit)).await;
    let runtime = &mut fleet[0];
    let candidate = next_message(&mut runtime.stream).await;
    assert_eq!(
        bundles_of(&candidate)[0].1,
        2,
        "the cohort runs the candidate"
    );
    // Healthy first: two passing measurements.
    until(&app.policy, &started.id, |rollout| {
        rollout.measurements.len() >= 2
    })
    .await;
    exporter.spike();
    let back = loop {
        let update = tokio::time::timeout(Duration::from_secs(15), runtime.stream.message())
            .await
            .expect("the cohort returns to the baseline within 15 s")
            .expect("healthy")
            .expect("open");
        if bundles_of(&update)[0].1 == 1 {
            break Instant::now();
        }
    };
    let first_scrape = exporter
        .first_spike_scrape()
        .expect("the spike was scraped");
    let took = back - first_scrape;
    // The (failure_limit + 1)-th failed measurement fails the analysis:
    // each is on the analysis's grid, one interval apart, the first at
    // most one interval after the spike's first scrape; the tick that
    // takes the last one rolls the cohort back.
    let bound = INTERVAL * (failure_limit + 1) + TICK;
    println!(
        "spike to baseline: {} ms (bound: interval {} ms x (failure_limit {failure_limit} + 1) \
         + one tick {} ms = {} ms)",
        took.as_millis(),
        INTERVAL.as_millis(),
        TICK.as_millis(),
        bound.as_millis()
    );
    assert!(took <= bound, "{took:?} > {bound:?}");
    let rolled_back = get(&app.policy, &started.id).await;
    assert_eq!(rolled_back.state(), RolloutState::RolledBack);
    assert!(
        rolled_back
            .halted_because
            .contains("analysis error-ratio failed")
            && rolled_back
                .halted_because
                .contains("against `result < 0.05`"),
        "{}",
        rolled_back.halted_because
    );
    let failed: Vec<_> = rolled_back
        .measurements
        .iter()
        .filter(|measurement| measurement.phase() == MeasurementPhase::Failed)
        .collect();
    assert_eq!(failed.len(), failure_limit as usize + 1);
    assert!(
        failed
            .iter()
            .all(|measurement| measurement.value.unwrap() >= 0.05)
    );
    let events = app.events("team", "limits").await;
    let event = events
        .iter()
        .find(|event| event.kind() == proto::EventKind::RolloutRolledBack)
        .expect("a ROLLOUT_ROLLED_BACK event");
    let value = failed.last().unwrap().value.unwrap().to_string();
    assert!(
        event.reason.contains(&value) && event.reason.contains("result < 0.05"),
        "the event says the value {value} and the condition: {}",
        event.reason
    );
}

/// A Prometheus that stops answering makes each measurement an error, not
/// an inconclusive one, and the fifth in a row (the default limit is 4)
/// pauses the rollout.
async fn a_prometheus_that_stops_answering_pauses_the_rollout(backend: Backend) {
    let exporter = Exporter::start().await;
    let mut prometheus = Prometheus::start(&exporter).await;
    let app = server(backend, &prometheus).await;
    seed(&app).await;
    let started = start_measured(&app, error_ratio(0, 0)).await;
    until(&app.policy, &started.id, |rollout| {
        !rollout.measurements.is_empty()
    })
    .await;
    prometheus.stop().await;
    let paused = until(&app.policy, &started.id, |rollout| {
        rollout.state() == RolloutState::Paused
    })
    .await;
    assert!(
        paused.halted_because.contains(
            "analysis error-ratio could not measure: 5 errors in a row (at most 4 allowed)"
        ) && paused.halted_because.contains("did not answer"),
        "{}",
        paused.halted_because
    );
    let errors: Vec<_> = paused
        .measurements
        .iter()
        .rev()
        .take_while(|measurement| measurement.phase() == MeasurementPhase::Error)
        .collect();
    assert_eq!(errors.len(), 5, "{:?}", paused.measurements);
    assert!(
        errors.iter().all(|error| error.value.is_none()),
        "no answer is never a value"
    );
    let events = app.events("team", "limits").await;
    assert!(
        events
            .iter()
            .any(|event| event.kind() == proto::EventKind::RolloutPaused
                && event.reason.contains("errors in a row")),
        "{events:?}"
    );
    // Paused, not rolled back: the cohort keeps the candidate, and no
    // measurement is taken while a person decides.
    let measured = paused.measurements.len();
    tokio::time::sleep(INTERVAL * 2).await;
    let still = get(&app.policy, &started.id).await;
    assert_eq!(still.state(), RolloutState::Paused);
    assert_eq!(still.measurements.len(), measured);
}

/// A retried StartRollout gets the first outcome from its idempotency key
/// before any query is sent: the rollout started, so a Prometheus that
/// stopped answering since does not make the retry UNAVAILABLE.
async fn a_retried_start_is_replayed_without_asking_prometheus(backend: Backend) {
    let exporter = Exporter::start().await;
    let mut prometheus = Prometheus::start(&exporter).await;
    let app = server(backend, &prometheus).await;
    seed(&app).await;
    let mut request = start_request(vec![step(100, Duration::from_secs(3600))]);
    request.analyses = vec![error_ratio(0, 0)];
    request.idempotency_key = "start-limits-canary".into();
    let started = app
        .policy
        .clone()
        .start_rollout(request.clone())
        .await
        .expect("start")
        .into_inner();
    prometheus.stop().await;
    let retried = app
        .policy
        .clone()
        .start_rollout(request)
        .await
        .expect("the retry is answered from its key")
        .into_inner();
    assert_eq!(retried.id, started.id);
}

/// The guide states the bounds the server enforces: the analyses of one
/// rollout, the alerts of one notification, and a notification's body,
/// which is every request's on the HTTP port.
#[test]
fn the_guide_states_the_bounds_the_server_enforces() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/guides/rollout-analysis.md"
    ))
    .unwrap();
    let guide = guide.split_whitespace().collect::<Vec<_>>().join(" ");
    let limits = Limits::default();
    let mib = |bytes: usize| bytes / (1024 * 1024);
    assert_eq!(
        limits.max_message_bytes(),
        2 * limits.max_body_bytes + 64 * 1024
    );
    for stated in [
        format!("more than {MAX_ANALYSES} analyses in one rollout"),
        format!("no alerts or more than {MAX_ALERTS}"),
        format!(
            "at most twice `limits.max_body_bytes` plus 64 KiB ({} MiB + 64 KiB by default",
            mib(2 * limits.max_body_bytes)
        ),
        format!(
            "answered a server error or more than {} KiB",
            policyhub::prometheus::MAX_ANSWER_BYTES / 1024
        ),
    ] {
        assert!(guide.contains(&stated), "the guide does not say {stated:?}");
    }
}
