//! The agent's localhost HTTP API: verified policy for any process.
//!
//! - `GET /v1/namespaces/{namespace}/policies/{name}`: the body of the
//!   active version, with `Policyhub-Version`, `-Label`, `-Revision`,
//!   `-Digest`, `-Source` and an `ETag` (`"<version>-<revision>-<digest>"`,
//!   the server's).
//! - `GET /v1/namespaces/{namespace}/state`: the whole state in force, ETag
//!   `"<revision>"`.
//!
//!   Both answer 304 to a matching `If-None-Match`, and hold the read until
//!   it changes when `Prefer: wait=N` asks (long polling, at most 60 s).
//! - `GET /v1/namespaces/{namespace}/state:watch`: Server-Sent Events, one
//!   `state` event per state in force, whose `id` is its revision; a client
//!   reconnecting with `Last-Event-ID` gets the state in force at once if it
//!   is another, and nothing missed (each event is a whole state).
//! - `POST /v1/namespaces/{namespace}/state:reject` `{"revision", "reason"}`:
//!   the application refuses the state in force: REJECTED upstream, the one
//!   before back in force (and in the files).
//! - `POST /ofrep/v1/evaluate/flags/{key}` and `POST /ofrep/v1/evaluate/flags`:
//!   OFREP's single and bulk evaluation (`ofrep`), behind the same token.
//! - `GET /healthz`: 200 once every namespace holds a verified state, saying
//!   whether from the server or the cache, connected, whether the
//!   server's newest signed checkpoint grew stale, why the server refuses
//!   the agent's token while it does, and the last state refused (its
//!   revision and why) and the last history refused or restore taken;
//!   503 before.
//!
//! Errors are a JSON `google.rpc.Status`, as the server's HTTP port writes,
//! but on the OFREP routes, whose every error is OFREP's; a path asked
//! with a method it does not take is 405 with `Allow`.

use std::{convert::Infallible, path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use policyhub_runtime::RevokeError;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncRead, io::AsyncWrite, time::Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::followed::{Followed, FollowedNamespaces, InForce, source, state_json};
use super::ofrep;
use crate::connections::{Listener, Tracker, serve_http1};
use crate::http::{http_status, semantics, status_json};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// How often an idle event stream says it is alive.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Largest request body (a rejection) accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The API over the states held.
#[derive(Clone)]
pub struct Api {
    namespaces: Arc<FollowedNamespaces>,
    /// The last OFREP bulk answer, shared by every connection.
    bulk_answers: Arc<ofrep::BulkAnswers>,
    /// SHA-256 of the token callers must present.
    token: Option<[u8; 32]>,
    /// Cancelled when the agent stops: long polls answer with what is
    /// held, event streams end, and the port closes once the requests
    /// under way are answered.
    stop: CancellationToken,
}

/// The TLS acceptor of a certificate chain and key (PEM files).
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let chain = pem::parse_many(read(cert)?)
        .with_context(|| format!("{} is not PEM", cert.display()))?
        .into_iter()
        .map(|block| rustls_pki_types::CertificateDer::from(block.into_contents()))
        .collect();
    let key_file = key;
    let key = pem::parse(read(key)?).with_context(|| format!("{} is not PEM", key.display()))?;
    let key = rustls_pki_types::PrivateKeyDer::try_from(key.into_contents())
        .map_err(|error| anyhow::anyhow!("{}: {error}", key_file.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the agent API's certificate and key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Api {
    /// The API over `namespaces`, asking callers for `token` if any, until
    /// `stop` is cancelled.
    pub fn new(
        namespaces: Arc<FollowedNamespaces>,
        token: Option<String>,
        stop: CancellationToken,
    ) -> Self {
        Api {
            namespaces,
            bulk_answers: Arc::default(),
            token: token.map(|token| Sha256::digest(token.trim().as_bytes()).into()),
            stop,
        }
    }

    /// Serves HTTP/1.1 (over TLS when given) until the agent stops and the
    /// requests under way are answered.
    pub async fn serve(self, listener: Listener, tls: Option<TlsAcceptor>) {
        let stop = self.stop.clone();
        listener
            .serve(stop, |connection, stop| {
                let api = self.clone();
                let tls = tls.clone();
                async move {
                    let tracker = connection.tracker();
                    match tls {
                        None => api.connection(connection, tracker, stop).await,
                        // The handshake reads through the connection, so its
                        // header-read deadline bounds it too.
                        Some(tls) => match tls.accept(connection).await {
                            Ok(stream) => api.connection(stream, tracker, stop).await,
                            Err(error) => tracing::debug!(%error, "tls handshake failed"),
                        },
                    }
                }
            })
            .await
    }

    async fn connection(
        self,
        stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        tracker: Tracker,
        stop: CancellationToken,
    ) {
        let served = serve_http1(stream, tracker, stop, move |request| {
            let api = self.clone();
            async move { api.handle(request).await }
        })
        .await;
        if let Err(error) = served {
            tracing::debug!(%error, "agent connection ended");
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        match self.answer(request).await {
            Ok(response) => response,
            Err(status) => error(&status),
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Response<Body>, Status> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        if path == "/healthz" {
            return Ok(match parts.method {
                Method::GET => self.health(),
                _ => method_not_allowed(&parts.method, &path, Method::GET),
            });
        }
        if let Some(route) = ofrep::route(&path) {
            return Ok(self.ofrep(route, &parts, body).await);
        }
        self.authenticate(&parts.headers)?;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (namespace, rest) = match segments.as_slice() {
            ["v1", "namespaces", namespace, rest @ ..] => (*namespace, rest),
            _ => return Err(not_found(&parts.method, &path)),
        };
        let followed = self.namespaces.get(namespace).ok_or_else(|| {
            Status::not_found(format!("this agent does not follow namespace {namespace}"))
        })?;
        match (&parts.method, rest) {
            (&Method::GET, ["state"]) => {
                Ok(long_poll(followed, &parts.headers, &self.stop, state_reply).await)
            }
            (&Method::GET, ["state:watch"]) => Ok(events(followed, &parts.headers, &self.stop)),
            (&Method::POST, ["state:reject"]) => reject(followed, body).await,
            (&Method::GET, ["policies", name]) => {
                let name = (*name).to_owned();
                Ok(long_poll(followed, &parts.headers, &self.stop, |in_force| {
                    policy_reply(in_force, &name)
                })
                .await)
            }
            (method, ["state" | "state:watch"] | ["policies", _]) => {
                Ok(method_not_allowed(method, &path, Method::GET))
            }
            (method, ["state:reject"]) => Ok(method_not_allowed(method, &path, Method::POST)),
            _ => Err(not_found(&parts.method, &path)),
        }
    }

    /// An OFREP route: every answer in OFREP's shape, the refusals of a
    /// token or a method included, so that a provider reads each.
    async fn ofrep(
        &self,
        route: ofrep::Route<'_>,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Response<Body> {
        let response = if let Err(status) = self.authenticate(&parts.headers) {
            let mut refused = ofrep::refused(
                &route,
                StatusCode::UNAUTHORIZED,
                status.message().to_owned(),
            );
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            refused
        } else if parts.method != Method::POST {
            let details = format!(
                "{} does not take {}, only POST",
                parts.uri.path(),
                parts.method
            );
            let mut refused = ofrep::refused(&route, StatusCode::METHOD_NOT_ALLOWED, details);
            refused
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            refused
        } else {
            match route {
                ofrep::Route::Bulk => {
                    ofrep::bulk(&self.namespaces, &self.bulk_answers, &parts.headers, body).await
                }
                ofrep::Route::Single(key) => ofrep::single(&self.namespaces, key, body).await,
            }
        };
        response.map(BodyExt::boxed_unsync)
    }

    /// Checks the bearer token, when one is configured.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| <[u8; 32]>::from(Sha256::digest(token.trim().as_bytes())));
        match presented {
            Some(presented) if &presented == expected => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "the bearer token is not this agent's",
            )),
            None => Err(Status::unauthenticated(
                "this agent requires Authorization: Bearer <token>",
            )),
        }
    }

    /// 200 once every namespace holds a state, 503 before; which and from
    /// where either way.
    fn health(&self) -> Response<Body> {
        let mut ready = true;
        let namespaces: serde_json::Map<String, Value> = self
            .namespaces
            .all()
            .map(|followed| {
                let in_force = followed.current();
                ready &= in_force.is_some();
                let mut held = json!({
                    "revision": null,
                    "source": null,
                    "connected": followed.connected(),
                    "server": followed.server(),
                    "checkpointStale": followed.stale(),
                    "refused": followed.refused(),
                    "lastRejection": followed.last_rejection().map(|(revision, reason)| {
                        json!({"revision": revision.to_string(), "reason": reason})
                    }),
                    "lastHistoryRefusal": followed.last_history_refusal(),
                    "lastHistoryRestore": followed.last_history_restore(),
                });
                if let Some(in_force) = &in_force {
                    held["revision"] = json!(in_force.state.revision.to_string());
                    held["source"] = json!(source(&in_force.state));
                    held["ageSeconds"] = json!(in_force.age().as_secs());
                }
                (followed.namespace.clone(), held)
            })
            .collect();
        let (status, word) = if ready {
            (StatusCode::OK, "serving")
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting for a first verified state",
            )
        };
        json_response(status, &json!({"status": word, "namespaces": namespaces}))
    }
}

/// An answer that long polling compares by its `ETag`.
type Reply = Result<(HeaderValue, Response<Body>), Status>;

/// Answers with `reply` of the state in force: 304 when `If-None-Match`
/// names its ETag, after holding the read until it changes (or exists)
/// when `Prefer: wait=N` asks, or the agent stops (`stop`: a held read
/// answers at once then, rather than holding the agent's exit).
async fn long_poll(
    followed: &Followed,
    headers: &HeaderMap,
    stop: &CancellationToken,
    reply: impl Fn(Option<&InForce>) -> Reply,
) -> Response<Body> {
    let deadline = match semantics::wait(headers) {
        Ok(wait) => wait.map(|wait| Instant::now() + wait),
        Err(refused) => return error(&refused),
    };
    let mut receiver = followed.subscribe();
    loop {
        let in_force = receiver.borrow_and_update().clone();
        let answer = reply(in_force.as_deref());
        let unchanged = match &answer {
            Ok((etag, _)) => semantics::not_modified(headers, etag),
            Err(_) => true,
        };
        let waited_out = match deadline {
            Some(deadline) if unchanged => !matches!(
                stop.run_until_cancelled(tokio::time::timeout_at(deadline, receiver.changed()))
                    .await,
                Some(Ok(Ok(())))
            ),
            _ => true,
        };
        if !waited_out {
            continue;
        }
        return match answer {
            Ok((etag, _)) if unchanged => {
                let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response.headers_mut().insert(header::ETAG, etag);
                response
            }
            Ok((_, response)) => response,
            Err(status) => error(&status),
        };
    }
}

fn no_state_yet() -> Status {
    Status::unavailable("no verified state yet: neither the server nor the cache gave one")
}

fn state_reply(in_force: Option<&InForce>) -> Reply {
    let Some(in_force) = in_force else {
        return Err(no_state_yet());
    };
    let state = &in_force.state;
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", state.revision)).expect("digits are a header");
    let mut response = Response::new(Full::new(in_force.json.clone()).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(header::ETAG, etag.clone());
    Ok((etag, response))
}

fn policy_reply(in_force: Option<&InForce>, name: &str) -> Reply {
    let in_force = in_force.ok_or_else(no_state_yet)?;
    let state = &in_force.state;
    let bundle = state.bundles.get(name).ok_or_else(|| {
        Status::not_found(format!(
            "{}/{name} has no active version at revision {}",
            state.namespace, state.revision
        ))
    })?;
    let digest = bundle.digest.trim_start_matches("sha256:");
    let header = |text: String| {
        HeaderValue::from_str(&text).map_err(|_| Status::internal("a header is not text"))
    };
    let etag = header(format!(
        "\"{}-{}-{digest}\"",
        bundle.version, bundle.revision
    ))?;
    let body = in_force.bodies.get(name).cloned().unwrap_or_default();
    let mut response = Response::new(Full::new(body).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, etag.clone());
    headers.insert("policyhub-version", header(bundle.version.to_string())?);
    if let Some(label) = &bundle.label {
        headers.insert("policyhub-label", header(label.clone())?);
    }
    headers.insert("policyhub-revision", header(bundle.revision.to_string())?);
    headers.insert("policyhub-digest", header(bundle.digest.clone())?);
    headers.insert("policyhub-source", HeaderValue::from_static(source(state)));
    Ok((etag, response))
}

/// The state in force as Server-Sent Events, from `Last-Event-ID` on,
/// until the agent stops (`stop`): the stream ends then, whole, and a
/// client reconnects with its `Last-Event-ID`.
fn events(followed: &Followed, headers: &HeaderMap, stop: &CancellationToken) -> Response<Body> {
    let last: Option<u64> = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let receiver = followed.subscribe();
    let stop = stop.clone();
    let state = (receiver, last, stop);
    let stream = futures::stream::unfold(state, |(mut receiver, mut last, stop)| async move {
        loop {
            let in_force = receiver.borrow_and_update().clone();
            if let Some(in_force) = in_force
                && last != Some(in_force.state.revision)
            {
                let revision = in_force.state.revision;
                last = Some(revision);
                let text = format!(
                    "id: {revision}\nevent: state\ndata: {}\n\n",
                    String::from_utf8_lossy(&in_force.json)
                );
                return Some((Ok(Frame::data(Bytes::from(text))), (receiver, last, stop)));
            }
            let changed = tokio::time::timeout(KEEPALIVE, receiver.changed());
            match stop.run_until_cancelled(changed).await {
                Some(Ok(Ok(()))) => continue,
                None | Some(Ok(Err(_))) => return None,
                Some(Err(_)) => {
                    let alive = Frame::data(Bytes::from_static(b": keepalive\n\n"));
                    return Some((Ok(alive), (receiver, last, stop)));
                }
            }
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The application refuses the state in force.
async fn reject(followed: &Followed, body: Incoming) -> Result<Response<Body>, Status> {
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            Status::resource_exhausted(format!("the body exceeds {MAX_BODY_BYTES} bytes"))
        })?
        .to_bytes();
    let request: Value = serde_json::from_slice(&body)
        .map_err(|error| Status::invalid_argument(format!("the body is not JSON: {error}")))?;
    let revision = match &request["revision"] {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        Status::invalid_argument("revision: give the revision refused, such as \"12\"")
    })?;
    let reason = request["reason"]
        .as_str()
        .map(str::trim)
        .unwrap_or_default();
    if reason.is_empty() {
        return Err(Status::invalid_argument(
            "reason: say why the state is refused",
        ));
    }
    let mut held = followed.subscribe();
    let restored =
        followed
            .revoker
            .revoke(revision, reason)
            .await
            .map_err(|refused| match refused {
                RevokeError::NotInForce { .. } => Status::aborted(refused.to_string()),
                RevokeError::NothingToRestore(_) => {
                    Status::failed_precondition(refused.to_string())
                }
                RevokeError::Ended => Status::unavailable(refused.to_string()),
                _ => Status::unknown(refused.to_string()),
            })?;
    // Answer once the restored state is in force here too (its files
    // swapped back and reloaded).
    let back = held.wait_for(|in_force| {
        in_force
            .as_ref()
            .is_some_and(|in_force| in_force.state.revision == restored.revision)
    });
    if tokio::time::timeout(semantics::MAX_WAIT, back)
        .await
        .is_err()
    {
        tracing::warn!(
            revision,
            "the restored state took long to be put back in force"
        );
    }
    Ok(json_response(StatusCode::OK, &state_json(&restored)))
}

fn not_found(method: &Method, path: &str) -> Status {
    Status::not_found(format!(
        "no {method} {path} here: GET /v1/namespaces/{{namespace}}/policies/{{name}}, \
         GET /v1/namespaces/{{namespace}}/state, GET /v1/namespaces/{{namespace}}/state:watch, \
         POST /v1/namespaces/{{namespace}}/state:reject, POST /ofrep/v1/evaluate/flags, \
         POST /ofrep/v1/evaluate/flags/{{key}}, GET /healthz"
    ))
}

/// 405 with the method the path takes in `Allow`, as the server's HTTP
/// port answers.
fn method_not_allowed(method: &Method, path: &str, allowed: Method) -> Response<Body> {
    let status = Status::unimplemented(format!("{path} does not take {method}, only {allowed}"));
    let mut response = json_response(StatusCode::METHOD_NOT_ALLOWED, &status_json(&status));
    let allow = HeaderValue::from_str(allowed.as_str()).expect("a method is a header");
    response.headers_mut().insert(header::ALLOW, allow);
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: &Status) -> Response<Body> {
    let mut response = json_response(http_status(status.code()), &status_json(status));
    if status.code() == tonic::Code::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
