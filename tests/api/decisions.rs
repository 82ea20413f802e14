//! Decision logs (docs/src/guides/decisions.md): a real OPA (v1.22.3)
//! uploads its decision logs with its own decision_logs plugin, gzipped,
//! and every decision it answered is kept once, with the bundle revision
//! that made it, and listed by path, result, runtime, revision and time,
//! over gRPC, HTTP and the CLI. Uploads that are not OPA's format, too
//! large once decompressed, from a caller that does not hold the OPA, or
//! for a namespace not served to OPA get a clear 4xx and keep nothing; the
//! retention drops the oldest decisions beyond its count and age, and
//! counts them.

use std::io::Write as _;
use std::time::{Duration, Instant};

use policyhub::grpc::proto;
use serde_json::{Value, json};
use tonic_types::StatusExt;

use crate::auth::with_token;
use crate::cli::policyhub_with;
use crate::helpers::{Backend, free_port, opa_key_file, spawn_binary_server_on};
use crate::opa::{Opa, Served, activate_limit, opa_keys, served};

crate::on_both_backends_given_the_backend!(
    an_opas_decisions_are_kept_once_and_listed_by_what_decided_them,
    bad_decision_uploads_are_refused_with_a_clear_4xx_and_keep_nothing,
    a_change_is_judged_on_the_decisions_opas_made,
    the_impact_gate_admits_a_change_at_its_bound_and_refuses_one_past_it,
);

/// ListDecisions of `payments` as `token`'s holder, every page of
/// `page_size`.
async fn list(
    served: &Served,
    token: &str,
    filter: proto::ListDecisionsRequest,
) -> Vec<proto::Decision> {
    let mut decisions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = served
            .app
            .policy
            .clone()
            .list_decisions(with_token(
                proto::ListDecisionsRequest {
                    namespace: "payments".into(),
                    page_token: page_token.clone(),
                    ..filter.clone()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        decisions.extend(page.decisions);
        if page.next_page_token.is_empty() {
            return decisions;
        }
        page_token = page.next_page_token;
    }
}

/// Waits until `count` decisions of `payments` are listed.
async fn until_listed(served: &Served, count: usize) -> Vec<proto::Decision> {
    until_listed_such(served, |listed| listed.len() >= count).await
}

/// Waits until the decisions of `payments` listed are `done`.
async fn until_listed_such(
    served: &Served,
    done: impl Fn(&[proto::Decision]) -> bool,
) -> Vec<proto::Decision> {
    let started = Instant::now();
    loop {
        let listed = list(served, &served.admin, Default::default()).await;
        if done(&listed) {
            return listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} decisions listed: {listed:?}",
            listed.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An OPA of `served`'s `payments`, named opa-1, uploading its decision
/// logs every second.
fn logging_opa(served: &Served, keys: &[proto::OpaSigningKey]) -> Opa {
    let service = format!("http://{}/v1/opa", served.app.http_address.unwrap());
    let mut config = Opa::config(&service, &served.reader, keys, Some(("opa-1", &[])));
    config["decision_logs"] = json!({
        "service": "policyhub",
        "resource": "logs/payments/opa-1",
        "reporting": {"min_delay_seconds": 1, "max_delay_seconds": 1},
    });
    Opa::run(&config)
}

async fn an_opas_decisions_are_kept_once_and_listed_by_what_decided_them(backend: Backend) {
    let served = served(backend).await;
    let opa = logging_opa(&served, &opa_keys(&served.app, &served.reader).await);
    opa.decides(100, true, Duration::from_secs(30)).await;
    // The decisions above were made while waiting; those below are known.
    let first_revision = until_listed(&served, 1).await[0].revision;
    assert!(first_revision > 0, "the decision names its bundle revision");
    let mut made: Vec<(String, u64, bool)> = Vec::new();
    let decide = async |amount: u64| {
        let answer = opa
            .query("payments/authz/allow", &json!({ "amount": amount }))
            .await
            .unwrap();
        let id = answer["decision_id"].as_str().unwrap().to_owned();
        let allowed = answer["result"].as_bool().unwrap();
        (id, amount, allowed)
    };
    for amount in [10, 600, 20, 700] {
        made.push(decide(amount).await);
    }
    activate_limit(&served.app, &served.admin, 15).await;
    opa.decides(20, false, Duration::from_secs(30)).await;
    let before_second = until_listed(&served, 0).await.len();
    for amount in [10, 600, 20] {
        made.push(decide(amount).await);
    }
    let listed = until_listed(&served, before_second + made.len() + 1).await;

    // Each decision OPA answered is listed once, as it was made.
    for (id, amount, allowed) in &made {
        let found: Vec<&proto::Decision> = listed
            .iter()
            .filter(|decision| &decision.decision_id == id)
            .collect();
        assert_eq!(found.len(), 1, "decision {id} listed once: {listed:?}");
        let decision = found[0];
        assert_eq!(decision.path, "payments/authz/allow");
        assert_eq!(decision.runtime_id, "opa-1");
        let input =
            policyhub::grpc::convert::value_to_json("input", decision.input.clone().unwrap());
        assert_eq!(input.unwrap(), json!({ "amount": amount }));
        let result =
            policyhub::grpc::convert::value_to_json("result", decision.result.clone().unwrap());
        assert_eq!(result.unwrap(), json!(allowed));
    }
    let mut ids: Vec<&str> = listed.iter().map(|d| d.decision_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), listed.len(), "no decision twice");
    let received = |decision: &proto::Decision| {
        let at = decision.receive_time.unwrap();
        (at.seconds, at.nanos)
    };
    assert!(
        listed
            .windows(2)
            .all(|pair| received(&pair[0]) >= received(&pair[1])),
        "newest first"
    );

    // By revision: the first four known decisions were made at the first
    // revision, the last three at the activation's.
    let second_revision = listed[0].revision;
    assert!(second_revision > first_revision);
    let at = |revision: u64| proto::ListDecisionsRequest {
        revision,
        ..Default::default()
    };
    let at_second = list(&served, &served.admin, at(second_revision)).await;
    assert!(at_second.iter().all(|d| d.revision == second_revision));
    for (id, ..) in &made[4..] {
        assert!(
            at_second.iter().any(|d| &d.decision_id == id),
            "{id} at {second_revision}"
        );
    }
    let at_first = list(&served, &served.admin, at(first_revision)).await;
    for (id, ..) in &made[..4] {
        assert!(
            at_first.iter().any(|d| &d.decision_id == id),
            "{id} at {first_revision}"
        );
    }
    // Those OPA made before it had a bundle name none of this server's.
    let before_any = listed.iter().filter(|d| d.revision == 0).count();
    assert_eq!(at_first.len() + at_second.len() + before_any, listed.len());

    // By result: JSON compared as canonical JSON.
    let by_result = |result: &str| proto::ListDecisionsRequest {
        result: result.into(),
        ..Default::default()
    };
    let refused = list(&served, &served.admin, by_result("false")).await;
    let allowed = list(&served, &served.admin, by_result(" true ")).await;
    // Before it had a bundle, OPA's decisions were undefined.
    let undefined = list(&served, &served.admin, by_result("undefined")).await;
    assert_eq!(
        undefined.len(),
        listed.iter().filter(|d| d.result.is_none()).count()
    );
    assert_eq!(
        refused.len() + allowed.len() + undefined.len(),
        listed.len()
    );
    assert_eq!(
        refused
            .iter()
            .filter(|d| made.iter().any(|m| m.0 == d.decision_id))
            .count(),
        made.iter().filter(|m| !m.2).count()
    );

    // By path, runtime and time; pages of two hold them all, once.
    let by_path = proto::ListDecisionsRequest {
        path: "/payments/authz/allow".into(),
        runtime_id: "opa-1".into(),
        page_size: 2,
        ..Default::default()
    };
    assert_eq!(list(&served, &served.admin, by_path).await, listed);
    let elsewhere = proto::ListDecisionsRequest {
        path: "payments/authz/deny".into(),
        ..Default::default()
    };
    assert!(list(&served, &served.admin, elsewhere).await.is_empty());
    let last = listed[0].decide_time.unwrap();
    let since_last = proto::ListDecisionsRequest {
        since: Some(last),
        until: Some(last),
        ..Default::default()
    };
    assert_eq!(list(&served, &served.admin, since_last).await[0], listed[0]);

    // The CLI and HTTP list the same, in the protobuf JSON mapping.
    let server = format!("http://{}", served.app.address);
    let printed = policyhub_with(
        &[
            ("POLICYHUB_SERVER", server.as_str()),
            ("POLICYHUB_TOKEN", served.admin.as_str()),
        ],
        &["decisions", "payments", "--result", "false", "-o", "json"],
    )
    .json();
    assert_eq!(
        printed["decisions"].as_array().unwrap().len(),
        refused.len()
    );
    let (code, body) = crate::opa::curl(
        &served.app,
        "/v1/namespaces/payments/decisions?result=false&pageSize=500",
        &[format!("authorization: Bearer {}", served.admin)],
    );
    assert_eq!(code, 200, "{body}");
    let over_http: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(over_http["decisions"], printed["decisions"]);

    // Inputs are the callers' data: an OPA (a reader) may upload, not read.
    let refused = served
        .app
        .policy
        .clone()
        .list_decisions(with_token(
            proto::ListDecisionsRequest {
                namespace: "payments".into(),
                ..Default::default()
            },
            &served.reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

/// `json` gzipped, as OPA sends its decision logs.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A decision as OPA's decision log writes it, with fields this server
/// does not read.
fn decision(id: &str, amount: u64) -> Value {
    json!({
        "labels": {"id": "5b1a9c1e", "version": "1.22.3"},
        "decision_id": id,
        "bundles": {"payments": {"revision": "1;authz@1"}},
        "path": "payments/authz/allow",
        "input": {"amount": amount},
        "result": amount <= 500,
        "requested_by": "127.0.0.1:50000",
        "timestamp": "2026-11-29T10:00:00.123456789Z",
        "metrics": {"timer_rego_query_eval_ns": 1234},
        "req_id": 1,
    })
}

/// POSTs `body` to `path` on `address` with `headers`: the status and body.
async fn post(address: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!("http://{address}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.body(body).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// A bad upload: what it is, its path, headers and body, the status it
/// gets and what the answer says.
type BadUpload<'a> = (
    &'a str,
    &'a str,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    &'a str,
);

/// OPA's headers on an upload, with `token`.
fn opa_headers(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("content-encoding", "gzip".to_owned()),
        ("authorization", format!("Bearer {token}")),
    ]
}

async fn bad_decision_uploads_are_refused_with_a_clear_4xx_and_keep_nothing(backend: Backend) {
    let served = served(backend).await;
    let address = served.app.http_address.unwrap().to_string();
    let other = served.issuer.token("opa-2", &["payments:reader"]);
    let elsewhere = served.issuer.token("opa-3", &["billing:reader"]);
    // opa-1 asks for its bundle as the reader's subject: it is then an OPA
    // of the fleet, held by that subject.
    let (code, _) = crate::opa::curl(
        &served.app,
        "/v1/opa/bundles/payments?runtime.id=opa-1",
        &[format!("authorization: Bearer {}", served.reader)],
    );
    assert_eq!(code, 200);
    let good = serde_json::to_vec(&json!([decision("d-1", 10)])).unwrap();
    let logs = "/v1/opa/logs/payments/opa-1";
    let with = |token: &str, changes: &[(&'static str, &'static str)]| {
        let mut headers = opa_headers(token);
        for (name, value) in changes {
            headers.retain(|(header, _)| header != name);
            if !value.is_empty() {
                headers.push((name, value.to_string()));
            }
        }
        headers
    };
    let big_field = "x".repeat(600);
    let bomb = vec![b' '; 4 * 1024 * 1024];
    let cases: Vec<BadUpload<'_>> = vec![
        (
            "no token",
            logs,
            with("", &[("authorization", "")]),
            gzip(&good),
            401,
            "",
        ),
        (
            "another namespace's reader",
            logs,
            with(&elsewhere, &[]),
            gzip(&good),
            403,
            "reader",
        ),
        (
            "another subject's OPA",
            logs,
            with(&other, &[]),
            gzip(&good),
            403,
            "held by subject",
        ),
        (
            "an OPA that never asked for its bundle",
            "/v1/opa/logs/payments/opa-9",
            with(&served.reader, &[]),
            gzip(&good),
            400,
            "has not asked for the bundle",
        ),
        (
            "a namespace not served to OPA",
            "/v1/opa/logs/billing/opa-1",
            with(&elsewhere, &[]),
            gzip(&good),
            404,
            "not served to OPA",
        ),
        (
            "gzip that is not",
            logs,
            with(&served.reader, &[]),
            good.clone(),
            400,
            "not valid gzip",
        ),
        (
            "an encoding not decoded",
            logs,
            with(&served.reader, &[("content-encoding", "br")]),
            gzip(&good),
            415,
            "Content-Encoding",
        ),
        (
            "not JSON",
            logs,
            with(&served.reader, &[]),
            gzip(b"[{\"decision_id\""),
            400,
            "not a valid array of OpaDecision",
        ),
        (
            "an object, not an array",
            logs,
            with(&served.reader, &[]),
            gzip(&serde_json::to_vec(&decision("d-1", 10)).unwrap()),
            400,
            "an array of OpaDecision",
        ),
        (
            "a decision without its id",
            logs,
            with(&served.reader, &[]),
            gzip(&serde_json::to_vec(&json!([decision("", 10)])).unwrap()),
            400,
            "decisions[0].decision_id",
        ),
        (
            "a path too long",
            logs,
            with(&served.reader, &[]),
            gzip(
                &serde_json::to_vec(&json!([decision("d-1", 10), {
                    "decision_id": "d-2", "path": big_field, "timestamp": "2026-11-29T10:00:00Z",
                }]))
                .unwrap(),
            ),
            400,
            "decisions[1].path",
        ),
        (
            "a decision without its time",
            logs,
            with(&served.reader, &[]),
            gzip(
                &serde_json::to_vec(
                    &json!([{"decision_id": "d-1", "path": "payments/authz/allow"}]),
                )
                .unwrap(),
            ),
            400,
            "decisions[0].timestamp",
        ),
        (
            "a body that decompresses beyond the limit",
            logs,
            with(&served.reader, &[]),
            gzip(&bomb),
            413,
            "once decompressed",
        ),
    ];
    for (what, path, headers, body, status, says) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (code, answer) = post(&address, path, &headers, body).await;
        assert_eq!(code, status, "{what}: {answer}");
        assert!(answer.contains(says), "{what}: {answer}");
    }
    assert!(
        list(&served, &served.admin, Default::default())
            .await
            .is_empty(),
        "nothing kept"
    );
    // The good upload is kept once: OPA sending it again keeps nothing.
    for kept in [1, 0] {
        let headers = opa_headers(&served.reader);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (code, answer) = post(&address, logs, &headers, gzip(&good)).await;
        assert_eq!(code, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            answer["kept"].as_u64().unwrap_or_default(),
            kept,
            "{answer}"
        );
    }
    let listed = list(&served, &served.admin, Default::default()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revision, 1);
    // Listing filters that do not parse are refused, naming the field.
    for (filter, field) in [
        (
            proto::ListDecisionsRequest {
                result: "{not json".into(),
                ..Default::default()
            },
            "result",
        ),
        (
            proto::ListDecisionsRequest {
                runtime_id: "a b".into(),
                ..Default::default()
            },
            "runtime_id",
        ),
        (
            proto::ListDecisionsRequest {
                since: Some(prost_types::Timestamp {
                    seconds: 10,
                    nanos: 0,
                }),
                until: Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "until",
        ),
    ] {
        let refused = served
            .app
            .policy
            .clone()
            .list_decisions(with_token(
                proto::ListDecisionsRequest {
                    namespace: "payments".into(),
                    ..filter
                },
                &served.admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
}

/// Retention: a namespace keeps its newest `max_per_namespace` decisions
/// and none received longer ago than `max_age`; what it drops is counted
/// by reason. A server process of its own, whose metrics are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_decisions_are_dropped_beyond_the_count_and_the_age_and_counted() {
    let data = tempfile::tempdir().unwrap();
    let (http, metrics) = (free_port(), free_port());
    let env = [
        (
            "POLICYHUB_OPA__NAMESPACES__PAYMENTS__ROOTS",
            r#"["payments"]"#.to_owned(),
        ),
        (
            "POLICYHUB_SIGNING__OPA_KEY_FILES",
            json!([opa_key_file(data.path())]).to_string(),
        ),
        ("POLICYHUB_HTTP_LISTEN", format!("127.0.0.1:{http}")),
        ("POLICYHUB_METRICS_LISTEN", format!("127.0.0.1:{metrics}")),
        ("POLICYHUB_DECISIONS__MAX_PER_NAMESPACE", "10".to_owned()),
        ("POLICYHUB_DECISIONS__MAX_AGE", "3s".to_owned()),
    ];
    let (mut server, _) = spawn_binary_server_on(free_port(), data.path(), &env).await;
    let address = format!("127.0.0.1:{http}");
    let client = reqwest::Client::new();
    let answer = client
        .get(format!(
            "http://{address}/v1/opa/bundles/payments?runtime.id=opa-1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let upload = async |from: u64, to: u64| {
        let decisions: Vec<Value> = (from..to).map(|n| decision(&format!("d-{n}"), n)).collect();
        let body = gzip(&serde_json::to_vec(&decisions).unwrap());
        let (code, answer) = post(&address, "/v1/opa/logs/payments/opa-1", &headers, body).await;
        assert_eq!(code, 200, "{answer}");
    };
    let listed = async || -> Vec<String> {
        let answer: Value = client
            .get(format!(
                "http://{address}/v1/namespaces/payments/decisions?pageSize=500"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["decisions"]
            .as_array()
            .map(|decisions| {
                decisions
                    .iter()
                    .map(|decision| decision["decisionId"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let dropped = async |reason: &str| -> u64 {
        let text = client
            .get(format!("http://127.0.0.1:{metrics}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("policyhub_decisions_dropped_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    for (from, to) in [(0, 8), (8, 16), (16, 25)] {
        upload(from, to).await;
    }
    let newest: Vec<String> = (15..25).rev().map(|n| format!("d-{n}")).collect();
    assert_eq!(listed().await, newest);
    assert_eq!(dropped("count").await, 15);
    assert_eq!(dropped("age").await, 0);
    // Older than max_age: never listed, and dropped at the next upload.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(listed().await.is_empty());
    upload(25, 27).await;
    assert_eq!(listed().await, ["d-26", "d-25"]);
    assert_eq!(dropped("age").await, 10);
    server.kill().ok();
    server.wait().ok();
}

/// The amount of a decision's input.
fn amount(decision: &proto::Decision) -> u64 {
    let input = policyhub::grpc::convert::value_to_json("input", decision.input.clone().unwrap());
    input.unwrap()["amount"].as_u64().unwrap()
}

/// Drafts `body` as payments/authz as the admin; its version.
async fn drafted(served: &Served, body: &Value) -> u32 {
    served
        .app
        .policy
        .clone()
        .draft(with_token(
            proto::DraftRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                body: Some(policyhub::grpc::convert::json_to_struct(body)),
                ..Default::default()
            },
            &served.admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

/// AnalyzeImpact of `version` of payments/authz as `token`'s holder.
async fn impact(
    served: &Served,
    token: &str,
    version: u32,
) -> Result<proto::AnalyzeImpactResponse, tonic::Status> {
    served
        .app
        .policy
        .clone()
        .analyze_impact(with_token(
            proto::AnalyzeImpactRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                version,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn a_change_is_judged_on_the_decisions_opas_made(backend: Backend) {
    let served = served(backend).await;
    let opa = logging_opa(&served, &opa_keys(&served.app, &served.reader).await);
    opa.decides(0, true, Duration::from_secs(30)).await;
    for amount in (0..40).map(|n| n * 25) {
        opa.query("payments/authz/allow", &json!({ "amount": amount }))
            .await
            .unwrap();
    }
    // Every decision OPA made once its bundle was in: those before it
    // decided with none.
    let listed = until_listed_such(&served, |listed| {
        listed.iter().filter(|d| d.revision > 0).count() >= 40
    })
    .await;

    // A draft lowering the limit to 100 flips exactly the decisions of
    // amounts above 100 and at most 500, from true to false.
    let body = json!({
        "modules": {"authz/allow.rego": crate::opa::ALLOW},
        "data": {"payments": {"limits": {"max": 100}}},
    });
    let draft = drafted(&served, &body).await;
    let report = impact(&served, &served.admin, draft).await.unwrap();
    let flipped = listed
        .iter()
        .filter(|d| (101..=500).contains(&amount(d)))
        .count() as u64;
    assert_eq!(report.replayed, listed.len() as u64);
    assert_eq!((report.changed, report.unknown), (flipped, 0), "{report:?}");
    assert_eq!(report.changes.len(), 1, "{report:?}");
    let change = &report.changes[0];
    assert_eq!(
        (
            change.path.as_str(),
            change.before.as_str(),
            change.after.as_str()
        ),
        ("payments/authz/allow", "true", "false")
    );
    assert_eq!(change.count, flipped);
    assert!(!change.examples.is_empty() && change.examples.len() <= 5);
    for example in &change.examples {
        let decision = listed
            .iter()
            .find(|d| d.decision_id == example.decision_id)
            .unwrap();
        assert!((101..=500).contains(&amount(decision)));
        assert_eq!(example.input, decision.input);
    }
    // The active version itself changes nothing.
    let unchanged = impact(&served, &served.admin, 1).await.unwrap();
    assert_eq!(
        (unchanged.changed, unchanged.unknown),
        (0, 0),
        "{unchanged:?}"
    );
    assert_eq!(unchanged.replayed, listed.len() as u64);

    // A builtin the engine lacks: those decisions are unknown, named by it,
    // never unchanged.
    let regex = json!({
        "modules": {"authz/allow.rego": "package payments.authz\n\ndefault allow := false\n\n\
            allow if regex.match(`^[0-9]+$`, sprintf(\"%v\", [input.amount]))\n"},
        "data": {"payments": {"limits": {"max": 500}}},
    });
    let regex_draft = drafted(&served, &regex).await;
    let report = impact(&served, &served.admin, regex_draft).await.unwrap();
    assert_eq!(
        (report.changed, report.unknown),
        (0, listed.len() as u64),
        "{report:?}"
    );
    assert_eq!(report.unknowns[0].reason, "builtin regex.match");

    // The CLI prints the same report; a reader may not ask, a version that
    // does not exist is not found, a limit beyond the bound is refused.
    let server = format!("http://{}", served.app.address);
    let printed = policyhub_with(
        &[
            ("POLICYHUB_SERVER", server.as_str()),
            ("POLICYHUB_TOKEN", served.admin.as_str()),
        ],
        &[
            "analyze-impact",
            "payments/authz",
            "--version",
            &draft.to_string(),
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(printed["changed"], json!(flipped.to_string()));
    let refused = impact(&served, &served.reader, draft).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let refused = impact(&served, &served.admin, 99).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let refused = served
        .app
        .policy
        .clone()
        .analyze_impact(with_token(
            proto::AnalyzeImpactRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                version: draft,
                limit: 10_001,
                ..Default::default()
            },
            &served.admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("limit"), "{refused:?}");
}

/// Uploads `decisions` as OPA opa-1 of `served`, which asks for its bundle
/// first.
async fn upload_as_opa(served: &Served, decisions: &[Value]) {
    let (code, _) = crate::opa::curl(
        &served.app,
        "/v1/opa/bundles/payments?runtime.id=opa-1",
        &[format!("authorization: Bearer {}", served.reader)],
    );
    assert_eq!(code, 200);
    let headers = opa_headers(&served.reader);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body = gzip(&serde_json::to_vec(decisions).unwrap());
    let address = served.app.http_address.unwrap().to_string();
    let (code, answer) = post(&address, "/v1/opa/logs/payments/opa-1", &headers, body).await;
    assert_eq!(code, 200, "{answer}");
}

/// payments/authz with a limit of `max`.
fn limit(max: u64) -> Value {
    json!({
        "modules": {"authz/allow.rego": crate::opa::ALLOW},
        "data": {"payments": {"limits": {"max": max}}},
    })
}

/// Publishes the open draft of payments/authz as the admin, with
/// `idempotency_key` (none for `""`).
async fn publish(served: &Served, idempotency_key: &str) -> Result<u32, tonic::Status> {
    served
        .app
        .policy
        .clone()
        .publish(with_token(
            proto::PublishRequest {
                namespace: "payments".into(),
                name: "authz".into(),
                idempotency_key: idempotency_key.into(),
                ..Default::default()
            },
            &served.admin,
        ))
        .await
        .map(|reply| reply.into_inner().version.unwrap().version)
}

/// Activates `version` of payments/authz as the admin.
async fn activate(served: &Served, version: u32) -> Result<(), tonic::Status> {
    served
        .app
        .policy
        .clone()
        .activate(with_token(
            proto::ActivateRequest {
                targets: vec![proto::ActivationTarget {
                    namespace: "payments".into(),
                    name: "authz".into(),
                    selector: Some(proto::activation_target::Selector::Version(version)),
                    ..Default::default()
                }],
                reason: "the new limit".into(),
                ..Default::default()
            },
            &served.admin,
        ))
        .await
        .map(|_| ())
}

/// Starts a one-step rollout of `version` of payments/authz as the admin.
async fn roll_out(served: &Served, version: u32) -> Result<proto::Rollout, tonic::Status> {
    served
        .app
        .policy
        .clone()
        .start_rollout(with_token(
            proto::StartRolloutRequest {
                namespace: "payments".into(),
                targets: vec![proto::RolloutTargetRequest {
                    name: "authz".into(),
                    selector: Some(proto::rollout_target_request::Selector::Version(version)),
                    expected_active_version: None,
                }],
                steps: vec![proto::RolloutStep {
                    percentage: 100,
                    ..Default::default()
                }],
                reason: "the new limit, step by step".into(),
                ..Default::default()
            },
            &served.admin,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts that the impact gate refused with `refused`, under its rule
/// `IMPACT`, saying each of `says`.
fn assert_gate_refused(refused: &tonic::Status, says: &[&str]) {
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    for said in says {
        assert!(refused.message().contains(said), "{said}: {refused:?}");
    }
    let failure = refused
        .get_details_precondition_failure()
        .expect("violations");
    assert_eq!(failure.violations[0].r#type, "IMPACT");
}

/// The version of payments/authz active, and its open draft's.
async fn pointers(served: &Served) -> (u32, u32) {
    let policy = served
        .app
        .policy
        .clone()
        .get_policy(with_token(
            proto::GetPolicyRequest {
                namespace: "payments".into(),
                name: "authz".into(),
            },
            &served.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    (policy.active_version, policy.draft_version)
}

async fn the_impact_gate_admits_a_change_at_its_bound_and_refuses_one_past_it(backend: Backend) {
    let served = crate::opa::served_with(backend, |settings| {
        let payments = settings.opa.namespaces.get_mut("payments").unwrap();
        payments.impact_gate = Some(policyhub::config::ImpactGateSettings {
            max_changed_percent: 10.0,
            decisions: 1000,
        });
        settings.rollouts.required_approvals = [("payments".to_owned(), 1)].into();
    })
    .await;
    // With no decisions recorded, the limit of 500 was published and
    // activated: the report it was judged on replayed nothing.
    // Twenty decisions, amounts 0 to 950 by 50, allowed up to 500.
    let decisions: Vec<Value> = (0..20)
        .map(|n| decision(&format!("d-{n}"), n * 50))
        .collect();
    upload_as_opa(&served, &decisions).await;

    // 450 flips 500 alone (1 of 20, 5 %); 400 flips 450 and 500 (10 %, the
    // bound): both are published.
    drafted(&served, &limit(450)).await;
    let at_450 = publish(&served, "").await.unwrap();
    drafted(&served, &limit(400)).await;
    let at_400 = publish(&served, "publish-400").await.unwrap();

    // 350 flips three (15 %): refused, naming the path, the count and the
    // report; the draft stays a draft.
    let draft = drafted(&served, &limit(350)).await;
    let refused = publish(&served, "").await.unwrap_err();
    assert_gate_refused(
        &refused,
        &[
            "the impact gate of namespace payments refuses publishing payments/authz version",
            "more than 10% of a path's decisions",
            "payments/authz/allow: 3 of 20 decisions (15.0%)",
            "the 20 newest decisions replayed against the active bundle of revision",
        ],
    );
    assert_eq!(pointers(&served).await, (1, draft));

    // One decision more, of 425, which 400 flips too: 3 of 21 (14.3 %).
    upload_as_opa(&served, &[decision("d-20", 425)]).await;
    let refused = activate(&served, at_400).await.unwrap_err();
    assert_gate_refused(
        &refused,
        &[
            "refuses activating payments/authz version 3: it decides more than 10%",
            "payments/authz/allow: 3 of 21 decisions (14.3%)",
        ],
    );
    let refused = roll_out(&served, at_400).await.unwrap_err();
    assert_gate_refused(&refused, &["refuses rolling out payments/authz version 3"]);
    // A retry of the publication admitted before gets its first outcome,
    // whatever the decisions say now.
    assert_eq!(publish(&served, "publish-400").await.unwrap(), at_400);
    assert_eq!(pointers(&served).await, (1, draft));

    // 450 flips 500 alone still: activated. From there, 400 flips 425 and
    // 450 (2 of 21): the rollout is admitted and waits for its approver,
    // with the report it was admitted on.
    activate(&served, at_450).await.unwrap();
    assert_eq!(pointers(&served).await.0, at_450);
    let rollout = roll_out(&served, at_400).await.unwrap();
    assert_eq!(rollout.state(), proto::RolloutState::PendingApproval);
    let fetched = served
        .app
        .policy
        .clone()
        .get_rollout(with_token(
            proto::GetRolloutRequest {
                namespace: "payments".into(),
                id: rollout.id.clone(),
            },
            &served.admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let impact = fetched
        .impact
        .expect("the report the rollout was admitted on");
    assert_eq!(
        (impact.replayed, impact.changed, impact.unknown),
        (21, 2, 0)
    );
    assert_eq!(
        impact.paths,
        [proto::ImpactPath {
            path: "payments/authz/allow".into(),
            replayed: 21,
            changed: 2,
            unknown: 0,
        }]
    );
    assert_eq!(
        (
            impact.changes[0].before.as_str(),
            impact.changes[0].after.as_str()
        ),
        ("true", "false")
    );
}
