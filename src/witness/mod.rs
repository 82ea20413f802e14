//! `policyhub witness`: a witness of logs, a process of its own beside the
//! server, as the agent is. It speaks C2SP tlog-witness over HTTP
//! (`POST /add-checkpoint`): it cosigns, with its own Ed25519 key (C2SP
//! tlog-cosignature, `cosignature/v1`), a checkpoint of a log it knows only
//! when the log's key signed it and its tree extends the last one the
//! witness cosigned for that log, which it keeps in its state file. So a
//! log that shows two histories, or winds one back, cannot get both
//! cosigned by the same witness.

mod add;
mod key;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use policyhub_runtime::cosignature::{Cosigner, verifier_key};
use signed_note::{Signature, Signer as _};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::connections::{Instruments, Limits, Listener};

/// Largest request body accepted: a checkpoint, its signatures, 63 hashes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What a witness is.
pub struct Settings {
    /// Its key's name, such as `witness.example.com/w1`.
    pub name: String,
    pub key_file: PathBuf,
    pub state_file: PathBuf,
    /// The verifier keys of the logs it witnesses (the key name is the
    /// log's origin).
    pub logs: Vec<String>,
    pub listen: SocketAddr,
}

struct Witness {
    name: String,
    key: ed25519_dalek::SigningKey,
    logs: add::Logs,
    file: state::StateFile,
    /// The record, held while a submission is checked and persisted.
    record: Mutex<state::Record>,
}

/// Runs the witness until the process is stopped; prints its verifier key.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        signed_note::is_key_name_valid(&settings.name),
        "{:?} is not a key name (no spaces or +)",
        settings.name
    );
    anyhow::ensure!(!settings.logs.is_empty(), "no log to witness (--log)");
    let key = key::load_or_create(&settings.key_file)?;
    let file = state::StateFile::new(&settings.state_file);
    let record = file.load()?;
    let witness = Arc::new(Witness {
        logs: add::Logs::new(settings.logs)?,
        name: settings.name,
        key,
        file,
        record: Mutex::new(record),
    });
    let tcp = TcpListener::bind(settings.listen).await?;
    let vkey = verifier_key(&witness.name, &witness.key.verifying_key());
    println!("{vkey}");
    tracing::info!(listen = %tcp.local_addr()?, verifier_key = %vkey, "witness ready");
    // Never cancelled: the witness stops with its process.
    let stop = tokio_util::sync::CancellationToken::new();
    Listener::new(tcp, "witness", Limits::default(), Instruments::default())
        .serve_http(stop, move |request| {
            let witness = witness.clone();
            async move { witness.handle(request).await }
        })
        .await;
    Ok(())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

impl Witness {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != "/add-checkpoint" {
            return text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
        }
        if request.method() != Method::POST {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "POST only\n".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
            return response;
        }
        let body = match Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "text/plain",
                    "the body is too large\n".into(),
                );
            }
        };
        match self.add(&body).await {
            Ok(lines) => text(StatusCode::OK, "text/plain; charset=utf-8", lines),
            Err(add::Refusal::Conflict(size)) => text(
                StatusCode::CONFLICT,
                "text/x.tlog.size",
                format!("{size}\n"),
            ),
            Err(add::Refusal::Other(status, why)) => {
                tracing::warn!(%status, why, "checkpoint refused");
                text(status, "text/plain; charset=utf-8", format!("{why}\n"))
            }
        }
    }

    /// Checks, persists, then cosigns: the cosignature lines.
    async fn add(&self, body: &[u8]) -> Result<String, add::Refusal> {
        let internal = |why: String| {
            tracing::error!(why, "cosigning failed");
            add::Refusal::Other(StatusCode::INTERNAL_SERVER_ERROR, why)
        };
        let mut record = self.record.lock().await;
        let mut next = record.clone();
        let text = add::add(body, &self.logs, &mut next)?;
        self.file
            .save(&next)
            .map_err(|error| internal(format!("{error:#}")))?;
        *record = next;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|error| internal(error.to_string()))?
            .as_secs();
        let cosigner = Cosigner {
            name: &self.name,
            key: &self.key,
            time,
        };
        let signature = cosigner
            .sign(&text)
            .map_err(|error| internal(error.to_string()))?;
        let line = Signature::new(self.name.clone(), cosigner.key_id(), signature)
            .map_err(|error| internal(error.to_string()))?;
        String::from_utf8(line.to_bytes()).map_err(|error| internal(error.to_string()))
    }
}
