//! OFREP: `policyhub agent`'s bulk evaluation of a namespace of 100
//! policies (`POST /ofrep/v1/evaluate/flags`, every policy an object flag)
//! against the same agent's plain GET of one policy, and the bulk
//! evaluation answered 304 (`If-None-Match` naming the state in force)
//! against answered 200 in full: calls per second over 16 HTTP/1.1
//! keep-alive connections, one request at a time on each, the two calls
//! alternating run by run, and the agent's CPU time per call. The bench's
//! clients share the machine's cores with the agent.

use std::time::Duration;

use anyhow::ensure;

use crate::{
    Outcome, Row, Settings, Target, Unit,
    support::{NAMESPACE, Options, POLICY, Policyhub, cpu_time, micros},
    unary::{Agent, HTTP_CONNECTIONS, HttpCaller, callers_rate},
};

/// Policies of the namespace, each a flag of the bulk evaluation.
const FLAGS: usize = 100;
/// About how long each policy's body is.
const BODY_BYTES: usize = 200;
/// The floor on bulk evaluation's rate against the plain GET's.
const BULK_FLOOR: f64 = 0.7;
/// What an OpenFeature provider sends.
const CONTEXT: &str = r#"{"context":{"targetingKey":"user-1"}}"#;

/// A request's calls per second and the agent's CPU time per call.
async fn measure(
    agent: &Agent,
    request: &str,
    expected: &'static str,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let mut callers = Vec::with_capacity(HTTP_CONNECTIONS);
    for _ in 0..HTTP_CONNECTIONS {
        callers.push(HttpCaller::sending(agent.address, request.to_owned(), expected).await?);
    }
    let before = cpu_time(agent.pid())?;
    let rate = callers_rate(callers, duration).await?;
    let cpu = cpu_time(agent.pid())?.saturating_sub(before);
    // The warm-up's calls count for the CPU time too, at about the rate.
    let calls = rate * (duration.as_secs_f64() + 0.3);
    Ok((rate, micros(cpu.div_f64(calls.max(1.0)))))
}

/// `request` on a connection of its own: the answer's ETag and how many
/// flags it lists.
async fn bulk_once(
    address: std::net::SocketAddr,
    request: &str,
) -> anyhow::Result<(String, usize)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no body in {response}"))?;
    let etag = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("etag"))
        .map(|(_, value)| value.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no ETag in {head}"))?;
    let body: serde_json::Value = serde_json::from_str(body)?;
    let flags = body["flags"].as_array().map_or(0, Vec::len);
    Ok((etag, flags))
}

pub async fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let duration = Duration::from_secs(settings.size(2, 5));
    let mut policyhub = Policyhub::start(Options {
        authenticated: true,
        ..Options::default()
    })
    .await?;
    policyhub.publish_bodies(1, BODY_BYTES).await?;
    for index in 1..FLAGS {
        policyhub
            .publish_policy(&format!("flag-{index:03}"), 1, BODY_BYTES)
            .await?;
    }
    let bearer = policyhub
        .token()
        .and_then(|token| token.to_str().ok().map(str::to_owned))
        .and_then(|value| value.strip_prefix("Bearer ").map(str::to_owned))
        .unwrap_or_default();
    let agent = Agent::start(&policyhub, &bearer).await?;
    let address = agent.address;

    let get = format!(
        "GET /v1/namespaces/{NAMESPACE}/policies/{POLICY} HTTP/1.1\r\nHost: {address}\r\n\r\n"
    );
    let bulk_with = |extra: &str| {
        format!(
            "POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: {address}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{CONTEXT}",
            CONTEXT.len()
        )
    };
    // The bulk answer's ETag, and that it lists every policy.
    let (etag, flags) = bulk_once(address, &bulk_with("Connection: close\r\n")).await?;
    ensure!(
        flags == FLAGS,
        "the bulk evaluation listed {flags} flags, not {FLAGS}"
    );
    let bulk = bulk_with("");
    let not_modified = bulk_with(&format!("If-None-Match: {etag}\r\n"));

    let (mut bulk_rates, mut get_rates) = (Vec::new(), Vec::new());
    let (mut fresh_rates, mut fresh_cpu, mut cached_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let mut cached_rates = Vec::new();
    for repeat in 1..=settings.repeats {
        let (bulk_rate, bulk_cpu) = measure(&agent, &bulk, "HTTP/1.1 200", duration).await?;
        let (get_rate, _) = measure(&agent, &get, "HTTP/1.1 200", duration).await?;
        let (cached_rate, cached) =
            measure(&agent, &not_modified, "HTTP/1.1 304", duration).await?;
        println!(
            "  ofrep, repeat {repeat}: bulk of {FLAGS} {bulk_rate:.0}/s ({bulk_cpu:.1} µs agent \
             CPU per call), GET {get_rate:.0}/s, bulk 304 {cached_rate:.0}/s ({cached:.1} µs)"
        );
        bulk_rates.push(bulk_rate);
        get_rates.push(get_rate);
        fresh_rates.push(bulk_rate);
        cached_rates.push(cached_rate);
        fresh_cpu.push(bulk_cpu);
        cached_cpu.push(cached);
    }
    let mut outcome = Outcome::default();
    outcome.rows.push(
        Row::new(
            format!(
                "agent OFREP bulk evaluation of {FLAGS} flags calls/s, {HTTP_CONNECTIONS} connections"
            ),
            Unit::PerSecond,
            bulk_rates,
            "the agent's GET of one policy, same connections",
            get_rates,
        )
        .target(Target::RatioAtLeast(BULK_FLOOR)),
    );
    outcome.rows.push(
        Row::new(
            "agent OFREP bulk evaluation answered 304 calls/s",
            Unit::PerSecond,
            cached_rates,
            "the same answered 200 in full",
            fresh_rates,
        )
        .target(Target::RatioAtLeast(1.0)),
    );
    outcome.rows.push(
        Row::new(
            "agent CPU per OFREP bulk evaluation answered 304",
            Unit::Microseconds,
            cached_cpu,
            "per the same answered 200 in full",
            fresh_cpu,
        )
        .target(Target::RatioAtMost(1.0)),
    );
    outcome.notes.push(format!(
        "{FLAGS} policies of about {BODY_BYTES} bytes in one namespace; {} s per run \
         after 0.3 s of warm-up; the agent's CPU time is read from its CPU-time clock",
        duration.as_secs()
    ));
    Ok(outcome)
}
