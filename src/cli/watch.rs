//! `policyhub watch`: follow the active bundles of a namespace, verifying
//! every bundle as it arrives, and resume after a disconnect.

use std::time::Duration;

use anyhow::{Context, bail};
use tonic::Code;

use super::connection::AuthChannel;
use super::failure::{Refused, Reply};

use crate::grpc::proto::{
    Bundle, GetSigningKeysRequest, WatchActiveRequest, WatchEventKind,
    bundle_service_client::BundleServiceClient,
};
use crate::signing::{self, BundleClaims, Jwk, Jwks, VerifyError};

/// What to watch.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The namespace.
    #[arg(long)]
    namespace: String,
    /// Only this policy; repeat for several. Default: every policy of the namespace.
    #[arg(long = "name")]
    names: Vec<String>,
    /// Resume after this revision instead of starting with a snapshot.
    #[arg(long, default_value_t = 0)]
    since_revision: u64,
    /// Print each message as one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// The server's JWKS.
pub(super) async fn fetch_jwks(
    client: &mut BundleServiceClient<AuthChannel>,
) -> anyhow::Result<Jwks> {
    let keys = client
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .reply("fetching the signing keys")?;
    Ok(Jwks {
        keys: keys
            .keys
            .into_iter()
            .map(|key| Jwk {
                kty: key.kty,
                crv: key.crv,
                x: key.x,
                kid: key.kid,
                alg: key.alg,
                use_: key.r#use,
            })
            .collect(),
    })
}

/// Verifies a bundle and returns its claims; a key rotated in since the
/// JWKS was fetched triggers one fetch of the JWKS.
pub(super) async fn verify(
    client: &mut BundleServiceClient<AuthChannel>,
    jwks: &mut Jwks,
    bundle: &Bundle,
) -> anyhow::Result<BundleClaims> {
    let verified = match signing::verify(&bundle.jws, jwks) {
        Err(VerifyError::UnknownKey(_)) => {
            *jwks = fetch_jwks(client).await?;
            signing::verify(&bundle.jws, jwks)
        }
        other => other,
    };
    let claims = verified.with_context(|| {
        format!(
            "bundle of {}/{} version {} does not verify",
            bundle.namespace, bundle.name, bundle.version
        )
    })?;
    let expected_subject = format!("{}/{}", bundle.namespace, bundle.name);
    if claims.sub != expected_subject
        || claims.ver != bundle.version
        || claims.digest != bundle.digest
    {
        bail!(
            "bundle of {expected_subject} version {} carries claims of {} version {}",
            bundle.version,
            claims.sub,
            claims.ver
        );
    }
    Ok(claims)
}

fn kind_name(kind: WatchEventKind) -> &'static str {
    match kind {
        WatchEventKind::Snapshot => "SNAPSHOT",
        WatchEventKind::Update => "UPDATE",
        WatchEventKind::Progress => "PROGRESS",
        WatchEventKind::Unspecified => "UNSPECIFIED",
    }
}

/// Streams until interrupted; reconnects with the last revision when the
/// server goes away.
pub async fn run(channel: AuthChannel, args: WatchArgs) -> anyhow::Result<()> {
    let mut client = BundleServiceClient::new(channel);
    let mut jwks = fetch_jwks(&mut client).await?;
    let mut revision = args.since_revision;
    loop {
        let request = WatchActiveRequest {
            namespace: args.namespace.clone(),
            names: args.names.clone(),
            since_revision: revision,
            runtime: None,
        };
        let mut stream = match client.watch_active(request).await {
            Err(status) if status.code() == Code::Unavailable => {
                eprintln!(
                    "server unavailable ({}); retrying from revision {revision}",
                    status.message()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            other => other.reply(format!("watching namespace {}", args.namespace))?,
        };
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) if status.code() == Code::Unavailable => {
                    eprintln!(
                        "stream ended ({}); resuming from revision {revision}",
                        status.message()
                    );
                    break;
                }
                Err(status) => {
                    return Err(Refused::new("following the watch stream", status).into());
                }
            };
            let bundles = message.decode_bundles().context("decoding the bundles")?;
            for bundle in &bundles {
                verify(&mut client, &mut jwks, bundle).await?;
            }
            revision = message.revision;
            print_message(
                message.kind(),
                message.revision,
                message.reset,
                &bundles,
                args.json,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_message(kind: WatchEventKind, revision: u64, reset: bool, bundles: &[Bundle], json: bool) {
    if json {
        let bundles: Vec<serde_json::Value> = bundles
            .iter()
            .map(|bundle| {
                serde_json::json!({
                    "namespace": bundle.namespace, "name": bundle.name, "version": bundle.version,
                    "label": bundle.label, "digest": bundle.digest, "revision": bundle.revision,
                    "key_id": bundle.key_id, "verified": true,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"kind": kind_name(kind), "revision": revision, "reset": reset, "bundles": bundles})
        );
        return;
    }
    let reset = if reset { " (reset)" } else { "" };
    println!(
        "revision {revision} {}{reset}: {} bundle(s)",
        kind_name(kind),
        bundles.len()
    );
    for bundle in bundles {
        let label = if bundle.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", bundle.label)
        };
        println!(
            "  {}/{} version {}{label} {} verified, signed by {}",
            bundle.namespace, bundle.name, bundle.version, bundle.digest, bundle.key_id
        );
    }
}
