//! A real `policyhub witness` the kit starts beside its server: it cosigns
//! the server's checkpoints (C2SP `tlog-witness`), and is stopped with
//! SIGKILL and started again over the same key and state.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::AsyncBufReadExt as _,
    process::{Child, Command},
};

use crate::server::free_port;

/// One witness process and what it keeps.
pub struct Witness {
    binary: PathBuf,
    name: String,
    dir: PathBuf,
    log: String,
    port: u16,
    verifier_key: String,
    child: Option<Child>,
}

impl Witness {
    /// Starts `binary witness` named `name` (its key's name) over `dir`
    /// (its key and state files), witnessing the log of verifier key `log`,
    /// on a free loopback port.
    pub async fn start(binary: &Path, name: &str, dir: &Path, log: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut witness = Witness {
            binary: binary.to_owned(),
            name: name.to_owned(),
            dir: dir.to_owned(),
            log: log.to_owned(),
            port: free_port()?,
            verifier_key: String::new(),
            child: None,
        };
        witness.restart().await?;
        Ok(witness)
    }

    /// Starts the process again (after [`Witness::stop`]) on the same port
    /// over the same key and state; it prints its verifier key once it
    /// listens.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the witness is still running");
        }
        let mut child = Command::new(&self.binary)
            .args(["witness", "--name", &self.name, "--key-file"])
            .arg(self.dir.join("witness.key"))
            .arg("--state-file")
            .arg(self.dir.join("witness.state"))
            .args(["--log", &self.log, "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} witness", self.binary.display()))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        self.child = Some(child);
        if line.trim().is_empty() {
            self.stop().await;
            bail!("policyhub witness exited at start");
        }
        self.verifier_key = line.trim().to_owned();
        Ok(())
    }

    /// SIGKILL: it answers nothing from now on.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.ok();
        }
    }

    /// Its verifier key, `<name>+<key id>+<base64 key>`, as it printed it.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// Its entry in the server's `audit.witnesses` (TOML inline table).
    pub fn entry(&self) -> String {
        format!(
            "{{url = \"http://127.0.0.1:{}/\", key = \"{}\"}}",
            self.port, self.verifier_key
        )
    }
}
