//! Who callers are: the authentication built from the settings (the local
//! issuer, the OpenID Connect issuers, the role bindings), what keeps it
//! current while the server runs, and the layer each service sits behind.

use anyhow::{Context, bail};
use tonic::transport::server::TlsConnectInfo;
use tonic_health::server::HealthReporter;

use crate::config::{GENERATED_SECRET_FILE, Settings};
use crate::grpc::auth::{Authenticated, Authentication, Authenticator, bindings::Bindings};
use crate::signing;

use super::refuse_insecure_off_loopback;
use super::tasks::{OnEnd, Stop, Supervisor};

/// How callers are authenticated: `--insecure` (loopback only), an issuer's
/// JWKS, a shared HS256 secret, or, with nothing configured, a local secret
/// generated into the data directory.
pub(super) fn authentication(settings: &Settings) -> anyhow::Result<Authentication> {
    let auth = &settings.auth;
    if settings.insecure {
        refuse_insecure_off_loopback(settings)?;
        tracing::warn!(listen = %settings.listen, "authentication is disabled (--insecure): every caller is an anonymous admin");
        return Ok(Authentication::Disabled);
    }
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let local_secret = match (&auth.jwks_file, &auth.hs256_secret_file) {
        (Some(_), Some(_)) => bail!("configure auth.jwks_file or auth.hs256_secret_file, not both"),
        (Some(_), None) => None,
        (None, Some(path)) => {
            let secret = read(path)?.trim().to_owned();
            anyhow::ensure!(
                secret.len() >= 32,
                "{} holds fewer than 32 bytes: use a longer secret",
                path.display()
            );
            Some(secret)
        }
        // OpenID Connect issuers alone: no local issuer.
        (None, None) if !auth.issuers.is_empty() => None,
        (None, None) => {
            let path = settings.data_dir.join(GENERATED_SECRET_FILE);
            if path.exists() {
                Some(read(&path)?.trim().to_owned())
            } else {
                let secret = signing::write_new_secret(&path)?;
                tracing::warn!(
                    path = %path.display(),
                    "no token issuer configured: generated a local token secret; mint an admin token with \
                     `policyhub token --data-dir {} --subject <you> --role '*:admin'`",
                    settings.data_dir.display()
                );
                Some(secret)
            }
        }
    };
    let authenticator = Authenticator::new(
        auth,
        local_secret.as_deref().map(str::as_bytes),
        &crate::metrics::global().auth_instruments(),
    )?;
    if let Some(path) = &auth.bindings_file {
        authenticator.set_bindings(load_bindings(settings, &authenticator, path)?);
    }
    Ok(Authentication::Tokens(Box::new(authenticator)))
}

/// The role bindings of `path`, checked against the trusted issuers.
fn load_bindings(
    settings: &Settings,
    authenticator: &Authenticator,
    path: &std::path::Path,
) -> anyhow::Result<Bindings> {
    let certificates = settings
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    Bindings::load(path, &authenticator.signed_claims(), certificates)
}

/// Reads the role bindings again on SIGHUP and when their file changes
/// (checked every two seconds; a Kubernetes ConfigMap's update swaps a
/// symlink, which changes what the path resolves to). A file that does not
/// load leaves the bindings in force.
async fn reload_bindings(settings: Settings, authenticator: Authenticator) {
    use tokio::signal::unix::{SignalKind, signal};
    let Some(path) = settings.auth.bindings_file.clone() else {
        return;
    };
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|metadata| (metadata.modified().ok(), metadata.len()))
    };
    let mut hangups = signal(SignalKind::hangup()).ok();
    let mut seen = stamp(&path);
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(hangups) => hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup => {}
            _ = ticker.tick() => {
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        match load_bindings(&settings, &authenticator, &path) {
            Ok(bindings) => {
                let count = bindings.names().count();
                authenticator.set_bindings(bindings);
                tracing::info!(path = %path.display(), bindings = count, "role bindings reloaded");
            }
            Err(error) => tracing::error!(error = %format!("{error:#}"),
                "role bindings not reloaded; the previous ones stay in force"),
        }
    }
}

/// Refuses a database whose immutability triggers are not all in place:
/// while one was off, history may have been rewritten, and serving it
/// would sign checkpoints over whatever it now holds.
/// What keeps identities current: each issuer's keys fetched on
/// schedule, the role bindings read again when they change, and the
/// health of the issuers' keys.
pub(super) fn identity_tasks(
    authentication: &Authentication,
    settings: &Settings,
    health: &HealthReporter,
    supervisor: &mut Supervisor,
) {
    let Authentication::Tokens(authenticator) = authentication else {
        return;
    };
    // Each starts again when it ends: their state (the keys fetched, the
    // bindings in force) lives in the authenticator, and serving goes on
    // with it meanwhile.
    let remotes = authenticator.remotes();
    for remote in &remotes {
        let remote = remote.clone();
        supervisor.spawn("issuer-keys", OnEnd::Restart, Stop::Abort, move |_| {
            remote.clone().refresh_forever()
        });
    }
    if settings.auth.bindings_file.is_some() {
        let (settings, authenticator) = (settings.clone(), (**authenticator).clone());
        supervisor.spawn("bindings-reload", OnEnd::Restart, Stop::Abort, move |_| {
            reload_bindings(settings.clone(), authenticator.clone())
        });
    }
    if !remotes.is_empty() {
        let (health, interval) = (health.clone(), settings.health_check_interval());
        supervisor.spawn("issuers-health", OnEnd::Restart, Stop::Abort, move |_| {
            watch_issuers(health.clone(), remotes.clone(), interval)
        });
    }
}

/// `service` behind authentication.
pub(super) fn guard<S>(service: S, authentication: &Authentication) -> Authenticated<S> {
    Authenticated::new(service, authentication.clone(), peer_identity)
}

/// The SPIFFE ID of the client certificate a request's connection
/// presented (verified against `tls.client_ca_file` by the handshake).
fn peer_identity(extensions: &http::Extensions) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<crate::connections::Tracker>>()?;
    let certificates = info.peer_certs()?;
    crate::grpc::auth::spiffe_id(certificates.first()?)
}

/// The health service name that answers SERVING while every OpenID Connect
/// issuer's keys were fetched at the last attempt, and NOT_SERVING while
/// some issuer's fail (its last keys serve within their grace period).
pub const ISSUERS_SERVICE: &str = "policyhub.auth.issuers";

async fn watch_issuers(
    health: HealthReporter,
    remotes: Vec<std::sync::Arc<crate::grpc::auth::Remote>>,
    interval: std::time::Duration,
) {
    let mut serving = None;
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let fresh = remotes.iter().all(|remote| !remote.failing());
        if serving == Some(fresh) {
            continue;
        }
        serving = Some(fresh);
        let status = if fresh {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(ISSUERS_SERVICE, status).await;
    }
}
