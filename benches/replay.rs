//! Impact analysis's replay: decisions per second through the embedded
//! Rego engine, against a real OPA (v1.22.3, built by
//! `scripts/install-opa`) answering the same inputs over its local REST
//! API, measured in turn in the same run.
//!
//! One policy of the shape an authorization policy has (a default, two
//! ways to allow, a set of reasons with `sprintf`, a comprehension) and
//! its data are loaded into both. `REPLAY_INPUTS` (default 5,000) inputs,
//! made by a fixed generator, are decided at `payments/authz/allow`:
//!
//! - **the replay**: one thread, one engine, as AnalyzeImpact runs each
//!   side of an analysis;
//! - **OPA**: `POST /v1/data/payments/authz/allow`, `REPLAY_OPA_CLIENTS`
//!   (default 4) requests in flight on keep-alive connections, OPA's
//!   strongest configuration for a stream of independent queries on this
//!   machine.
//!
//! Each of `REPLAY_ROUNDS` (default 5) rounds measures both; the report
//! gives the medians with their spread and each round's ratio replay / OPA
//! (target: at least 2×). Every OPA answer is checked against the
//! replay's, so a faster wrong answer cannot pass.
//!
//! Run with `cargo bench --bench replay`.

use std::{
    env,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use futures::{StreamExt, stream};
use policyhub::domain::canonical_json;
use policyhub::domain::impact::{Decider, Replayed};
use policyhub::domain::rego::BundleContent;
use serde_json::{Value, json};

mod support;

use support::{free_port, load_average, opa_binary};

const POLICY: &str = r#"package payments.authz

default allow := false

allow if {
	input.amount <= data.payments.limits.max
	input.currency in data.payments.currencies
	not blocked
}

allow if "admin" in input.roles

blocked if input.country in data.payments.blocked_countries

reasons contains sprintf("amount %v over %v", [input.amount, data.payments.limits.max]) if {
	input.amount > data.payments.limits.max
}

reasons contains sprintf("blocked country %s", [input.country]) if blocked

clerks := count([role | some role in input.roles; startswith(role, "clerk")])
"#;

const PATH: &str = "payments/authz/allow";

fn data() -> Value {
    json!({"payments": {
        "limits": {"max": 500},
        "currencies": ["EUR", "USD"],
        "blocked_countries": ["KP", "IR"],
    }})
}

/// `count` inputs from a fixed linear congruential generator.
fn inputs(count: usize) -> Vec<Value> {
    let mut state: u64 = 0xbe4c;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let currencies = ["EUR", "USD", "GBP"];
    let countries = ["FR", "DE", "KP", "US"];
    let roles = ["admin", "clerk", "clerk-eu", "auditor"];
    (0..count)
        .map(|_| {
            let chosen: Vec<&str> = roles.iter().filter(|_| next(4) == 0).copied().collect();
            json!({
                "amount": next(1000),
                "currency": currencies[next(3) as usize],
                "country": countries[next(4) as usize],
                "roles": chosen,
            })
        })
        .collect()
}

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    env::var(name).map_or(Ok(default), |text| {
        text.parse().with_context(|| format!("{name}={text}"))
    })
}

/// A running OPA, killed when dropped.
struct Opa {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Opa {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Opa {
    async fn start() -> anyhow::Result<Opa> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("authz.rego"), POLICY)?;
        std::fs::write(dir.path().join("data.json"), data().to_string())?;
        let port = free_port()?;
        let child = Command::new(opa_binary()?)
            .args(["run", "--server", "--log-level", "error", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(dir.path().join("authz.rego"))
            .arg(dir.path().join("data.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let opa = Opa {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let started = Instant::now();
        while reqwest::get(format!("http://{}/health", opa.address))
            .await
            .is_err()
        {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "OPA did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(opa)
    }

    /// Decides every input with `clients` requests in flight; each answer
    /// as canonical JSON (`None`: undefined), in input order.
    async fn decide_all(
        &self,
        client: &reqwest::Client,
        inputs: &[Value],
        clients: usize,
    ) -> anyhow::Result<Vec<Option<String>>> {
        let url = format!("http://{}/v1/data/{PATH}", self.address);
        let answers: Vec<anyhow::Result<Option<String>>> = stream::iter(inputs)
            .map(|input| {
                let request = client.post(&url).json(&json!({ "input": input }));
                async move {
                    let answer: Value = request.send().await?.error_for_status()?.json().await?;
                    Ok(answer.get("result").map(canonical_json))
                }
            })
            .buffered(clients)
            .collect()
            .await;
        answers.into_iter().collect()
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{low:.0} to {high:.0}")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let count = setting("REPLAY_INPUTS", 5_000)?;
    let rounds = setting("REPLAY_ROUNDS", 5)?;
    let clients = setting("REPLAY_OPA_CLIENTS", 4)?;
    let inputs = inputs(count);
    let canonical: Vec<String> = inputs.iter().map(canonical_json).collect();
    let mut content = BundleContent::default();
    content
        .modules
        .insert("authz/authz.rego".into(), POLICY.into());
    content.data = data().as_object().cloned().unwrap_or_default();
    let opa = Opa::start().await?;
    let client = reqwest::Client::new();
    println!(
        "replay: {count} inputs at {PATH}, {rounds} rounds, OPA with {clients} requests in flight; \
         load average {}",
        load_average()
    );
    let (mut replayed_rates, mut opa_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        let mut decider = Decider::new(&content)?;
        let replayed: Vec<Replayed> = canonical
            .iter()
            .map(|input| decider.decide(PATH, Some(input)))
            .collect();
        let replay_rate = count as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let by_opa = opa.decide_all(&client, &inputs, clients).await?;
        let opa_rate = count as f64 / started.elapsed().as_secs_f64();
        for (index, (replay, opa)) in replayed.iter().zip(&by_opa).enumerate() {
            ensure!(
                *replay == Replayed::Decided(opa.clone()),
                "input {index} {}: OPA {opa:?}, replay {replay:?}",
                canonical[index]
            );
        }
        println!(
            "round {round}: replay {replay_rate:.0} decisions/s, OPA {opa_rate:.0} decisions/s, \
             ratio {:.2}",
            replay_rate / opa_rate
        );
        replayed_rates.push(replay_rate);
        opa_rates.push(opa_rate);
        ratios.push(replay_rate / opa_rate);
    }
    let ratio_spread = {
        let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{low:.2} to {high:.2}")
    };
    println!(
        "replay: median {:.0} decisions/s ({}); OPA: median {:.0} decisions/s ({}); \
         ratio replay / OPA: median {:.2} ({ratio_spread}); target at least 2",
        median(&mut replayed_rates.clone()),
        spread(&replayed_rates),
        median(&mut opa_rates.clone()),
        spread(&opa_rates),
        median(&mut ratios),
    );
    Ok(())
}
