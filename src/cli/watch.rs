//! `policyhub watch-active`: follow the active bundles of a namespace through the
//! runtime library, so it resumes, verifies, caches and reports exactly as
//! a runtime built on `policyhub-runtime` does.

use std::{path::PathBuf, time::Duration};

use futures::StreamExt;
use policyhub_runtime::{Event, Refusal, Source, State, Subscription, WatchError};
use serde_json::json;
use tonic::{Code, Status};

use super::connection::Connection;
use super::failure::{Refused, Unusable, What};
use super::output::Output;

/// What to watch.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The namespace.
    #[arg(long)]
    namespace: String,
    /// Only this policy; repeat for several. Default: every policy of the namespace.
    #[arg(long = "name")]
    names: Vec<String>,
    /// Name this watcher as a runtime: it then appears in `policyhub
    /// runtimes` and reports every state it applies.
    #[arg(long)]
    runtime_id: Option<String>,
    /// A runtime label, key=value; repeat for several (with --runtime-id).
    #[arg(long = "label", value_parser = parse_label, requires = "runtime_id")]
    labels: Vec<(String, String)>,
    /// Keep the last verified state here, and start from it when the
    /// server cannot be reached.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Overrides the heartbeat interval the server announces; three
    /// without a message mean a dead connection.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
}

pub(super) fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

/// Follows the namespace until interrupted or refused for good.
pub async fn run(connection: &Connection, output: Output, args: WatchArgs) -> anyhow::Result<()> {
    let target = connection.runtime_target().await?;
    let mut subscription =
        Subscription::with_endpoints(target.servers, &args.namespace).names(args.names);
    if let Some(interval) = args.heartbeat_interval {
        subscription = subscription.heartbeat_interval(interval);
    }
    if let Some(tls) = target.tls {
        subscription = subscription.tls(tls);
    }
    if let Some(token) = target.token {
        subscription = subscription.token(token);
    }
    if let Some(id) = args.runtime_id {
        subscription = subscription.runtime(id, args.labels);
    }
    if let Some(dir) = args.cache_dir {
        subscription = subscription.cache_dir(dir);
    }
    // Interruptions and refusals are logged by the library; the states in
    // force are what this prints.
    let mut previous: Option<State> = None;
    let mut events = std::pin::pin!(subscription.events());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Applied(state) | Event::FromCache(state)) => {
                print_state(&state, previous.as_ref(), output);
                previous = Some(state);
            }
            Ok(_) => {}
            Err(WatchError::Refused { refusal, message }) => {
                let action = format!("watching namespace {}", args.namespace);
                let status = Status::new(refusal_code(refusal), message);
                return Err(Refused::new(action, status).into());
            }
            Err(WatchError::Config(message)) => {
                return Err(Unusable::new(What::Connection, message).into());
            }
            Err(error) => return Err(Unusable::new(What::Connection, error.to_string()).into()),
        }
    }
    Ok(())
}

/// The gRPC code a refusal came as, for the exit code it maps to.
fn refusal_code(refusal: Refusal) -> Code {
    match refusal {
        Refusal::Unauthenticated => Code::Unauthenticated,
        Refusal::PermissionDenied => Code::PermissionDenied,
        Refusal::InvalidArgument => Code::InvalidArgument,
        Refusal::FailedPrecondition => Code::FailedPrecondition,
        Refusal::Unimplemented => Code::Unimplemented,
        _ => Code::Unknown,
    }
}

/// Prints a whole state: every bundle, and which changed since the last.
fn print_state(state: &State, previous: Option<&State>, output: Output) {
    let changed = |name: &str| {
        previous
            .and_then(|previous| previous.bundles.get(name))
            .is_none_or(|before| before.version != state.bundles[name].version)
    };
    let source = match state.source {
        Source::Server => "server",
        Source::Cache => "cache",
    };
    if output == Output::Json {
        let bundles: Vec<serde_json::Value> = state
            .bundles
            .values()
            .map(|bundle| {
                json!({
                    "namespace": state.namespace, "name": bundle.name, "version": bundle.version,
                    "label": bundle.label, "digest": bundle.digest, "revision": bundle.revision,
                    "key_id": bundle.key_id, "verified": true, "changed": changed(&bundle.name),
                })
            })
            .collect();
        outln!(
            "{}",
            json!({"namespace": state.namespace, "revision": state.revision, "source": source,
                   "bundles": bundles})
        );
        return;
    }
    let from_cache = if state.source == Source::Cache {
        " (from the cache: the server has not answered yet)"
    } else {
        ""
    };
    outln!(
        "revision {}: {} polic{} active{from_cache}",
        state.revision,
        state.bundles.len(),
        if state.bundles.len() == 1 { "y" } else { "ies" }
    );
    for bundle in state.bundles.values() {
        let label = bundle
            .label
            .as_ref()
            .map(|label| format!(" ({label})"))
            .unwrap_or_default();
        let mark = if changed(&bundle.name) { "*" } else { " " };
        outln!(
            "{mark} {}/{} version {}{label} {} verified, signed by {}",
            state.namespace,
            bundle.name,
            bundle.version,
            bundle.digest,
            bundle.key_id
        );
    }
}
