//! A real `policyhub serve` the kit drives: started on loopback ports it
//! binds itself (port 0, the addresses read back from its log) over a data
//! directory of its own (SQLite), killed with SIGKILL and started again on
//! the same ports (held by the kit meanwhile), wound back to a copy of its
//! database,
//! forked (a second server from the same copy); and the calls the kit makes
//! to it over its HTTP/JSON port, as any client would.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::{
    net::TcpSocket,
    process::{Child, Command},
};

/// The server's heartbeat on every watch stream: short, so that a dead
/// link is found in a fraction of a second.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// One server process and what it keeps.
pub struct Server {
    binary: PathBuf,
    data_dir: PathBuf,
    /// 0 until the first start has bound one.
    grpc_port: u16,
    /// 0 until the first start has bound one.
    http_port: u16,
    extra_env: Vec<(String, String)>,
    /// The HS256 secret tokens are verified with; `None`: `--insecure`,
    /// no tokens at all.
    secret_file: Option<PathBuf>,
    /// The kit's own token, once tokens are required.
    token: Option<String>,
    child: Option<Child>,
    /// Its ports while it is down: see [`hold`].
    held: Vec<TcpSocket>,
    http: reqwest::Client,
}

/// `port`, held while the server is down: bound and not listening, with
/// `SO_REUSEADDR` as the server binds it. A port taken by `bind` is not
/// given to anyone's port 0 (other kits', side by side, start servers all
/// the time), so a runtime dialling the server while it is down is refused
/// rather than answered by another server; and the server binds it again
/// beside this socket, which it may since neither listens but the server.
fn hold(port: u16) -> anyhow::Result<TcpSocket> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(([127, 0, 0, 1], port).into())
        .with_context(|| format!("holding port {port} while the server is down"))?;
    Ok(socket)
}

/// The port of the address the log line saying `what` names
/// (`serving grpc address=127.0.0.1:PORT`).
fn serving_on(output: &str, what: &str) -> Option<u16> {
    let line = output.lines().find(|line| line.contains(what))?;
    let address = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("address="))?;
    Some(address.parse::<std::net::SocketAddr>().ok()?.port())
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    /// Starts `binary serve` over `data_dir`, with `extra_env` set
    /// (`POLICYHUB_*` settings), and waits until it serves.
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut server = Server {
            binary: binary.to_owned(),
            data_dir: data_dir.to_owned(),
            grpc_port: 0,
            http_port: 0,
            extra_env: extra_env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            secret_file: None,
            token: None,
            child: None,
            held: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        server.restart().await?;
        Ok(server)
    }

    /// The gRPC address runtimes follow.
    pub fn grpc_address(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.grpc_port))
    }

    /// Where its data is.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where its log goes: beside its data directory.
    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    /// Starts the process again (after [`Server::kill`]) on the same ports
    /// (the first start: ports it binds itself, read back from its log)
    /// over the same data directory, and waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the server is still running");
        }
        let log = std::fs::File::create(self.log_path())?;
        let mut command = Command::new(&self.binary);
        command.arg("serve");
        match &self.secret_file {
            Some(file) => command.env("POLICYHUB_AUTH__HS256_SECRET_FILE", file),
            None => command.arg("--insecure"),
        };
        let child = command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env(
                "POLICYHUB_WATCH__HEARTBEAT_INTERVAL",
                format!("{}ms", HEARTBEAT.as_millis()),
            )
            .env("POLICYHUB_RUNTIMES__FLUSH_INTERVAL", "100ms")
            // The lines that name the ports it bound, whatever else is logged.
            .env("POLICYHUB_LOG_FORMAT", "text")
            .env(
                "RUST_LOG",
                match std::env::var("RUST_LOG") {
                    Ok(filter) => format!("{filter},policyhub::startup=info"),
                    Err(_) => "info".into(),
                },
            )
            .envs(self.extra_env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        for _ in 0..200 {
            let output = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if self.grpc_port == 0 || self.http_port == 0 {
                self.grpc_port = serving_on(&output, "serving grpc").unwrap_or(0);
                self.http_port = serving_on(&output, "serving http").unwrap_or(0);
            }
            let bound = self.grpc_port != 0 && self.http_port != 0;
            if bound && self.get("/v1/signingKeys").await.is_ok() {
                self.held.clear();
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok()?) {
                self.child = None;
                bail!("policyhub serve exited at start: {status}: {output}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("policyhub serve did not answer within 10 s")
    }

    /// SIGKILL: no chance to close a stream or flush anything. Its ports
    /// are held until it starts again.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("SIGKILL")?;
            self.held = vec![hold(self.grpc_port)?, hold(self.http_port)?];
        }
        Ok(())
    }

    /// Starts it again requiring a bearer token on every call, verified
    /// with the HS256 secret in `secret_file` (made when missing); the kit
    /// calls it with a token of its own. Given another secret later, the
    /// tokens of the one before are refused.
    pub async fn require_tokens(&mut self, secret_file: &Path) -> anyhow::Result<()> {
        if !secret_file.exists() {
            write_secret(secret_file)?;
        }
        self.kill().await?;
        self.secret_file = Some(secret_file.to_owned());
        self.token = Some(
            self.mint(secret_file, "conformance-kit", &["*:admin"])
                .await?,
        );
        self.restart().await
    }

    /// A token for `subject` with these grants (`namespace:role`), signed
    /// with the HS256 secret in `secret_file`, as `policyhub token` mints
    /// one.
    pub async fn mint(
        &self,
        secret_file: &Path,
        subject: &str,
        grants: &[&str],
    ) -> anyhow::Result<String> {
        let mut command = Command::new(&self.binary);
        command
            .args(["token", "--subject", subject, "--secret-file"])
            .arg(secret_file);
        for grant in grants {
            command.args(["--role", grant]);
        }
        let minted = command.output().await.context("policyhub token")?;
        ensure!(
            minted.status.success(),
            "policyhub token: {}",
            String::from_utf8_lossy(&minted.stderr).trim()
        );
        Ok(String::from_utf8(minted.stdout)?.trim().to_owned())
    }

    /// Whether it takes `token`: a call made with it is answered, not
    /// refused as unauthenticated.
    pub async fn accepts(&self, token: &str) -> anyhow::Result<bool> {
        let response = self
            .http
            .get(self.url("/v1/namespaces/conformance/policies"))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(response.status() != reqwest::StatusCode::UNAUTHORIZED)
    }

    /// Copies its database (with the server stopped, as a cold backup is
    /// taken) into `to`, with the signing key beside it.
    pub async fn copy_data(&mut self, to: &Path) -> anyhow::Result<()> {
        let running = self.child.is_some();
        self.kill().await?;
        copy_dir(&self.data_dir, to)?;
        if running {
            self.restart().await?;
        }
        Ok(())
    }

    /// Starts it again over the same data with `extra_env` instead of the
    /// settings it had: a server configured otherwise (a checkpoint
    /// interval, witnesses) under the same log and signing key.
    pub async fn reconfigure(&mut self, extra_env: &[(&str, &str)]) -> anyhow::Result<()> {
        self.kill().await?;
        self.extra_env = extra_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        self.restart().await
    }

    /// Replaces its data with `from` (a copy taken before) and starts it
    /// again: the server wound back to an older state.
    pub async fn wind_back(&mut self, from: &Path) -> anyhow::Result<()> {
        self.kill().await?;
        std::fs::remove_dir_all(&self.data_dir)?;
        copy_dir(from, &self.data_dir)?;
        self.restart().await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .authorized(self.http.get(self.url(path)))
            .send()
            .await?;
        answer(response).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .authorized(self.http.post(self.url(path)))
            .json(&body)
            .send()
            .await?;
        answer(response).await
    }

    /// The URL of `path` on its HTTP/JSON port.
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// With the kit's token, once the server requires one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Drafts `body` as the next version of `namespace`/`name` and
    /// publishes it, active unless `activate` is false; the version.
    pub async fn publish(
        &self,
        namespace: &str,
        name: &str,
        body: Value,
        activate: bool,
    ) -> anyhow::Result<(u32, u64)> {
        let policy = format!("/v1/namespaces/{namespace}/policies/{name}");
        self.post(&format!("{policy}/drafts"), json!({ "body": body }))
            .await
            .with_context(|| format!("draft {namespace}/{name}"))?;
        let published = self
            .post(
                &format!("{policy}:publish"),
                json!({ "activate": activate, "reason": "conformance" }),
            )
            .await
            .with_context(|| format!("publish {namespace}/{name}"))?;
        let version = published["version"]["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("publish answered no version: {published}"))?;
        Ok((version as u32, revision(&published["revision"])))
    }

    /// Publishes `body` as the next version of `namespace`/`name`, active;
    /// the revision of its activation.
    pub async fn release(&self, namespace: &str, name: &str, body: Value) -> anyhow::Result<u64> {
        Ok(self.publish(namespace, name, body, true).await?.1)
    }

    /// Activates these versions together, under one revision.
    pub async fn activate(&self, namespace: &str, targets: &[(&str, u32)]) -> anyhow::Result<u64> {
        let targets: Vec<Value> = targets
            .iter()
            .map(
                |(name, version)| json!({"namespace": namespace, "name": name, "version": version}),
            )
            .collect();
        let activated = self
            .post(
                "/v1/policies:activate",
                json!({"targets": targets, "reason": "conformance"}),
            )
            .await
            .context("activate")?;
        Ok(revision(&activated["revision"]))
    }

    /// Signs with a new key from now on; the new key's id.
    pub async fn rotate_signing_key(&self) -> anyhow::Result<String> {
        let rotated = self
            .post("/v1/signingKeys:rotate", json!({"reason": "conformance"}))
            .await?;
        Ok(rotated["signingKeyId"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The id of the key that signs new versions.
    pub async fn signing_key_id(&self) -> anyhow::Result<String> {
        let keys = self.get("/v1/signingKeys").await?;
        Ok(keys["signingKeyId"].as_str().unwrap_or_default().to_owned())
    }

    /// Revokes `key_id`, which no longer signs: the versions it signed are
    /// signed again; the revision that sent the active ones again.
    pub async fn revoke_signing_key(&self, key_id: &str) -> anyhow::Result<u64> {
        let revoked = self
            .post(
                &format!("/v1/signingKeys/{key_id}:revoke"),
                json!({"reason": "conformance"}),
            )
            .await
            .context("revoke the signing key")?;
        Ok(revision(&revoked["revision"]))
    }

    /// Declares that the database was restored from a backup.
    pub async fn record_restore(&self, reason: &str) -> anyhow::Result<()> {
        self.post("/v1/log:recordRestore", json!({ "reason": reason }))
            .await
            .context("record the restore")?;
        Ok(())
    }

    /// The C2SP verifier key of its log, `<origin>+<key id>+<base64 key>`,
    /// which witnesses are given: the origin of its newest checkpoint's
    /// note and the public key that signed it.
    pub async fn log_verifier_key(&self) -> anyhow::Result<String> {
        let listed = self.get("/v1/checkpoints?pageSize=1").await?;
        let note = listed["checkpoints"][0]["note"]
            .as_str()
            .unwrap_or_default();
        let origin = note
            .lines()
            .next()
            .filter(|origin| !origin.is_empty())
            .ok_or_else(|| anyhow!("the newest checkpoint has no note: {listed}"))?;
        let signer = &listed["checkpoints"][0]["keyId"];
        let keys = self.get("/v1/signingKeys").await?;
        let public = keys["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|key| key["kid"] == *signer))
            .and_then(|key| key["x"].as_str())
            .ok_or_else(|| anyhow!("no signing key {signer} in {keys}"))?;
        let public = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(public)?;
        Ok(ed25519_verifier_key(origin, &public))
    }

    /// The fleet view: each runtime of `namespace` with its newest outcome
    /// per policy.
    pub async fn runtimes(&self, namespace: &str) -> anyhow::Result<Vec<Value>> {
        let listed = self
            .get(&format!("/v1/namespaces/{namespace}/runtimes"))
            .await?;
        Ok(listed["runtimes"].as_array().cloned().unwrap_or_default())
    }
}

/// Writes a new random HS256 secret (48 characters) into `file`.
pub fn write_secret(file: &Path) -> anyhow::Result<()> {
    let secret: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(48)
        .collect();
    std::fs::write(file, secret)?;
    Ok(())
}

/// An answer's JSON, or its error as the server wrote it.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {}", body["message"].as_str().unwrap_or_default());
    }
    Ok(body)
}

/// A revision as the protobuf JSON mapping writes a uint64: a string.
fn revision(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| value.as_u64())
        .unwrap_or(0)
}

/// A C2SP signed-note verifier key of an Ed25519 public key under `name`:
/// `<name>+<key id>+base64(0x01 ‖ key)`, the key id the first four bytes of
/// SHA-256(`name` ‖ 0x0A ‖ 0x01 ‖ key).
fn ed25519_verifier_key(name: &str, public: &[u8]) -> String {
    let typed = [&[0x01], public].concat();
    let hash = Sha256::new()
        .chain_update(name)
        .chain_update(b"\n")
        .chain_update(&typed)
        .finalize();
    let id: String = hash[..4].iter().map(|byte| format!("{byte:02x}")).collect();
    let key = base64::engine::general_purpose::STANDARD.encode(typed);
    format!("{name}+{id}+{key}")
}

/// Copies the directory `from` into `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
