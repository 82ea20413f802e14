//! `policyhub agent`: the flags of the local agent, turned into its
//! settings (`crate::agent` does the work).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use policyhub_runtime::Subscription;

use super::args::{parse_namespace, parse_policy};
use super::connection::Connection;
use super::failure::Usage;
use crate::agent::{Agent, ApiSettings, Command, Render, Settings};

/// What the agent follows and how it serves it.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    connection: Connection,
    /// Follow every policy of this namespace; repeat for several.
    #[arg(long = "namespace", value_parser = parse_namespace, env = "POLICYHUB_AGENT_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<crate::domain::Namespace>,
    /// Follow only this policy, namespace/name; repeat for several (its
    /// namespace is then followed for the policies named only).
    #[arg(long = "policy", value_parser = parse_policy, env = "POLICYHUB_AGENT_POLICIES", value_delimiter = ',')]
    policies: Vec<crate::domain::PolicyRef>,
    /// The runtime id the agent reports as, in the fleet view and rollout
    /// cohorts [default: the host name]
    #[arg(long, env = "POLICYHUB_RUNTIME_ID")]
    runtime_id: Option<String>,
    /// A runtime label, key=value; repeat for several.
    #[arg(long = "label", value_parser = super::watch::parse_label, env = "POLICYHUB_RUNTIME_LABELS", value_delimiter = ',')]
    labels: Vec<(String, String)>,
    /// Keep the last verified state here, and serve it when restarted while
    /// the server cannot be reached.
    #[arg(long, env = "POLICYHUB_AGENT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Where the localhost API listens; another address needs TLS and a
    /// token.
    #[arg(long, env = "POLICYHUB_AGENT_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// File holding the token API callers must send as a bearer token
    /// (every path but /healthz).
    #[arg(long, env = "POLICYHUB_AGENT_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Serve the API over TLS with this certificate chain (PEM).
    #[arg(
        long,
        env = "POLICYHUB_AGENT_API_TLS_CERT_FILE",
        requires = "api_tls_key_file"
    )]
    api_tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of --api-tls-cert-file.
    #[arg(
        long,
        env = "POLICYHUB_AGENT_API_TLS_KEY_FILE",
        requires = "api_tls_cert_file"
    )]
    api_tls_key_file: Option<PathBuf>,
    /// A new connection to the API or metrics port must send a request's
    /// headers (after the TLS handshake) within this long, or it is closed.
    #[arg(long, env = "POLICYHUB_AGENT_API_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    api_header_read_timeout: Duration,
    /// A connection to the API or metrics port with no request in flight
    /// for this long is closed (a long poll or event stream is in flight).
    #[arg(long, env = "POLICYHUB_AGENT_API_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    api_idle_timeout: Duration,
    /// The most connections the API port (and the metrics port) holds; one
    /// more is closed at once.
    #[arg(long, env = "POLICYHUB_AGENT_API_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    api_max_connections: u64,
    /// Where to serve Prometheus metrics [default: not served]
    #[arg(long, env = "POLICYHUB_AGENT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Render each namespace's policies under DIR/<namespace>/ (a symlink
    /// swapped per revision: manifest.json and policies/<name>.json).
    #[arg(long, env = "POLICYHUB_AGENT_RENDER_DIR")]
    render_dir: Option<PathBuf>,
    /// A shell command run after each swap (POLICYHUB_NAMESPACE,
    /// POLICYHUB_REVISION and POLICYHUB_DIR set); a non-zero exit puts the
    /// previous files back and reports the revision REJECTED.
    #[arg(long, env = "POLICYHUB_AGENT_EXEC", requires = "render_dir")]
    exec: Option<String>,
    /// How long a revision's directory under --render-dir is kept once the
    /// link moved off it, so that a reader holding it finishes.
    #[arg(long, env = "POLICYHUB_AGENT_RENDER_GRACE_PERIOD", value_parser = humantime::parse_duration, default_value = "60s", requires = "render_dir")]
    render_grace_period: Duration,
    /// How long --exec may run before it counts as failed.
    #[arg(long, env = "POLICYHUB_AGENT_EXEC_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    exec_timeout: Duration,
    /// The bound of the first delay before reconnecting to the server once
    /// a stream is lost; each failed attempt doubles it, up to
    /// --backoff-max, and each delay is drawn at random below its bound.
    #[arg(long, env = "POLICYHUB_AGENT_BACKOFF_INITIAL", value_parser = humantime::parse_duration, default_value = "1s")]
    backoff_initial: Duration,
    /// The largest bound of the delay before reconnecting.
    #[arg(long, env = "POLICYHUB_AGENT_BACKOFF_MAX", value_parser = humantime::parse_duration, default_value = "30s")]
    backoff_max: Duration,
    /// Overrides the heartbeat interval the server announces.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// With several servers: how long, at most, the agent stays away from
    /// the one it prefers before trying it again (a random time in the
    /// second half of this).
    #[arg(long, env = "POLICYHUB_AGENT_REBALANCE_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    rebalance_interval: Duration,
    /// How old the server's newest signed checkpoint may grow before
    /// /healthz says the state may be stale; 0 turns the check off.
    #[arg(long, env = "POLICYHUB_AGENT_MAX_CHECKPOINT_AGE", value_parser = humantime::parse_duration, default_value = "10m")]
    max_checkpoint_age: Duration,
    /// A witness's verifier key, <name>+<key id>+<base64 key>; repeat for
    /// several.
    #[arg(
        long = "witness",
        env = "POLICYHUB_AGENT_WITNESSES",
        value_delimiter = ','
    )]
    witnesses: Vec<String>,
    /// Take a checkpoint only when this many of the --witness keys cosigned
    /// it; one with fewer is refused as a forked history is.
    #[arg(
        long,
        env = "POLICYHUB_AGENT_WITNESS_COSIGNATURES",
        default_value_t = 0
    )]
    witness_cosignatures: usize,
}

/// The host name, the default runtime id.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Runs the agent until interrupted, or until a subscription is refused
/// for good.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let target = args.connection.runtime_target().await?;
    // Each namespace followed, with the policies named (none: every one).
    let mut follows: Vec<(String, Vec<String>)> = Vec::new();
    for namespace in &args.namespaces {
        follows.push((namespace.as_str().to_owned(), Vec::new()));
    }
    for policy in &args.policies {
        let namespace = policy.namespace.as_str();
        match follows
            .iter_mut()
            .find(|(followed, _)| followed == namespace)
        {
            Some((_, names)) if names.is_empty() => {
                return Err(Usage::new(
                    format!(
                        "namespace {namespace} is followed whole and by --policy {namespace}/{}",
                        policy.name.as_str()
                    ),
                    "give --namespace to follow every policy of it, or --policy for some",
                )
                .into());
            }
            Some((_, names)) => names.push(policy.name.as_str().to_owned()),
            None => follows.push((namespace.to_owned(), vec![policy.name.as_str().to_owned()])),
        }
    }
    if follows.is_empty() {
        return Err(Usage::new(
            "the agent follows nothing",
            "give --namespace NAMESPACE or --policy NAMESPACE/NAME, repeated for several",
        )
        .into());
    }
    if args.backoff_initial.is_zero() || args.backoff_initial > args.backoff_max {
        return Err(Usage::new(
            format!(
                "--backoff-initial {} is not between zero and --backoff-max {}",
                humantime::format_duration(args.backoff_initial),
                humantime::format_duration(args.backoff_max)
            ),
            "give a first bound above zero and no larger than the largest",
        )
        .into());
    }
    let runtime_id = args.runtime_id.or_else(host_name).ok_or_else(|| {
        Usage::new(
            "the agent has no runtime id",
            "give --runtime-id (or POLICYHUB_RUNTIME_ID)",
        )
    })?;
    let subscriptions = follows
        .iter()
        .map(|(namespace, names)| {
            let max_checkpoint_age = Some(args.max_checkpoint_age).filter(|age| !age.is_zero());
            let mut subscription = Subscription::with_endpoints(target.servers.clone(), namespace)
                .names(names.clone())
                .runtime(runtime_id.clone(), args.labels.clone())
                .max_checkpoint_age(max_checkpoint_age)
                .witnesses(args.witnesses.clone(), args.witness_cosignatures)
                .rebalance_interval(args.rebalance_interval)
                .backoff(args.backoff_initial, args.backoff_max)
                // A refused token must not take the local API down: the
                // verified state stays served while the token is fixed.
                .retry_when_refused(true);
            if let Some(tls) = &target.tls {
                subscription = subscription.tls(tls.clone());
            }
            if let Some(token) = &target.token {
                subscription = subscription.token(token.clone());
            }
            if let Some(dir) = &args.cache_dir {
                subscription = subscription.cache_dir(dir);
            }
            if let Some(interval) = args.heartbeat_interval {
                subscription = subscription.heartbeat_interval(interval);
            }
            subscription
        })
        .collect();
    let api_token = args
        .api_token_file
        .as_ref()
        .map(|file| {
            std::fs::read_to_string(file)
                .map(|token| token.trim().to_owned())
                .map_err(|error| anyhow::anyhow!("reading {}: {error}", file.display()))
        })
        .transpose()?;
    let settings = Settings {
        subscriptions,
        namespaces: follows
            .into_iter()
            .map(|(namespace, _)| namespace)
            .collect(),
        api: ApiSettings {
            listen: args.listen,
            token: api_token,
            tls: args.api_tls_cert_file.zip(args.api_tls_key_file),
            connections: crate::connections::Limits {
                header_read_timeout: args.api_header_read_timeout,
                idle_timeout: args.api_idle_timeout,
                max_per_port: usize::try_from(args.api_max_connections).unwrap_or(usize::MAX),
            },
        },
        metrics_listen: args.metrics_listen,
        render: args.render_dir.map(|dir| Render {
            dir,
            command: args.exec.map(|line| Command {
                line,
                timeout: args.exec_timeout,
            }),
            grace_period: args.render_grace_period,
        }),
    };
    let agent = Agent::start(settings).await?;
    agent.run_until(crate::shutdown::signal()).await
}
