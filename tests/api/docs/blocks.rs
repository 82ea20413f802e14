//! Every shell block of the README and the book says whether it runs: its
//! fence's info string is `sh runnable` (a command a reader pastes against
//! the server of the quick start) or `sh norun` (a cluster, a remote
//! deployment, a daemon, a benchmark). Each runnable block runs here against
//! a fresh server, so a block that no longer works fails with its page and
//! line, and an unmarked block fails too, so none escapes by omission.
//!
//! A runnable block runs as a reader pastes it, with `sh -e`, from a
//! directory holding the server's `./data` (the quick start's), with the
//! `policyhub` binary on `PATH`, `POLICYHUB_TOKEN` holding an admin token
//! minted with `policyhub token`, and the addresses of the quick start
//! (`localhost:50051`, the HTTP port `127.0.0.1:8080`, the metrics port
//! `127.0.0.1:9090`) turned into the fresh server's, and the agent's
//! `127.0.0.1:7070` into a free port; `POLICYHUB_SERVER` names the gRPC
//! address, as the CLI's default names the quick start's. What a block
//! starts in the background is ended with it (its process group).
//!
//! A block also marked `standalone` (a guide's first program, which a
//! reader pastes straight after the README) runs with no token in the
//! environment: it mints what it needs from `./data`, as the README does,
//! so one that forgets fails here with the server's `UNAUTHENTICATED`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::policyhub_binary;

/// The languages of shell blocks.
const SHELLS: [&str; 5] = ["sh", "bash", "shell", "console", "zsh"];
/// The mark of a block the test runs.
const RUNNABLE: &str = "runnable";
/// The mark of a shell block that cannot run against a local server.
const NORUN: &str = "norun";
/// The mark of a runnable block that runs with no token given: it mints
/// its own.
const STANDALONE: &str = "standalone";
/// The longest a block may take.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A fenced code block of a page.
pub(crate) struct Block {
    page: PathBuf,
    /// The line of its opening fence, from 1.
    line: usize,
    pub(crate) language: String,
    marks: Vec<String>,
    pub(crate) body: String,
}

impl Block {
    fn is_shell(&self) -> bool {
        SHELLS.contains(&self.language.as_str())
    }

    pub(super) fn is_runnable(&self) -> bool {
        self.marks.iter().any(|mark| mark == RUNNABLE)
    }

    pub(super) fn is_standalone(&self) -> bool {
        self.marks.iter().any(|mark| mark == STANDALONE)
    }

    pub(crate) fn place(&self) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        format!(
            "{}:{}",
            self.page.strip_prefix(root).unwrap_or(&self.page).display(),
            self.line
        )
    }
}

/// The fenced code blocks of `text`, found in `page`.
pub(crate) fn blocks(page: &Path, text: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<(String, Block)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let fence_indent = line[..line.len() - trimmed.len()].to_owned();
                    let mut words = info.split_whitespace().map(str::to_owned);
                    open = Some((
                        fence_indent,
                        Block {
                            page: page.to_owned(),
                            line: index + 1,
                            language: words.next().unwrap_or_default(),
                            marks: words.collect(),
                            body: String::new(),
                        },
                    ));
                }
            }
            Some((indent, block)) => {
                if trimmed == "```" {
                    found.push(open.take().unwrap().1);
                } else {
                    block
                        .body
                        .push_str(line.strip_prefix(indent.as_str()).unwrap_or(line));
                    block.body.push('\n');
                }
            }
        }
    }
    found
}

/// Every fenced block of the README, ARCHITECTURE.md and the book.
fn every_block() -> Vec<Block> {
    crate::helpers::documentation_pages()
        .into_iter()
        .flat_map(|page| {
            let text = std::fs::read_to_string(&page).unwrap();
            blocks(&page, &text)
        })
        .collect()
}

#[test]
fn every_shell_block_is_marked_runnable_or_not() {
    let blocks = every_block();
    let mut unmarked = Vec::new();
    for block in blocks.iter().filter(|block| block.is_shell()) {
        let marks: Vec<&str> = block
            .marks
            .iter()
            .map(String::as_str)
            .filter(|mark| [RUNNABLE, NORUN].contains(mark))
            .collect();
        if marks.len() != 1 {
            unmarked.push(format!(
                "{}: a `{}` block needs `{RUNNABLE}` or `{NORUN}` after its language",
                block.place(),
                block.language
            ));
        } else if marks == [RUNNABLE] && block.language == "console" {
            unmarked.push(format!(
                "{}: a console transcript cannot run; write it as `sh {RUNNABLE}`",
                block.place()
            ));
        } else if block.is_standalone() && marks != [RUNNABLE] {
            unmarked.push(format!(
                "{}: `{STANDALONE}` says how a block runs; this one does not",
                block.place()
            ));
        }
    }
    assert!(unmarked.is_empty(), "{}", unmarked.join("\n"));
    let runnable = blocks.iter().filter(|block| block.is_runnable()).count();
    assert!(
        runnable >= 10,
        "only {runnable} runnable blocks found: is the fence parser broken?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runnable_block_runs_against_a_fresh_server() {
    let mut failures = Vec::new();
    for block in every_block().iter().filter(|block| block.is_runnable()) {
        if let Err(failure) = run(block).await {
            failures.push(format!("{}: {failure}", block.place()));
        }
    }
    assert!(
        failures.is_empty(),
        "runnable blocks that fail:\n\n{}",
        failures.join("\n\n")
    );
}

/// Runs `block` against a server of its own, as the quick start runs it.
async fn run(block: &Block) -> Result<(), String> {
    let workdir = tempfile::tempdir().unwrap();
    let app = crate::helpers::quick_start_app(workdir.path()).await;
    let grpc = app.address.to_string();
    let http = app.http_address.unwrap().to_string();
    let metrics = app.metrics_address.unwrap().to_string();
    let agent = format!("127.0.0.1:{}", crate::helpers::free_port());
    let script = block
        .body
        .replace("localhost:50051", &grpc)
        .replace("127.0.0.1:50051", &grpc)
        .replace("localhost:8080", &http)
        .replace("127.0.0.1:8080", &http)
        .replace("localhost:9090", &metrics)
        .replace("127.0.0.1:9090", &metrics)
        .replace("localhost:7070", &agent)
        .replace("127.0.0.1:7070", &agent);
    let bin_dir = policyhub_binary().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let command = |program: &str| {
        let mut command = tokio::process::Command::new(program);
        command
            .current_dir(workdir.path())
            .env("PATH", &path)
            .env("HOME", workdir.path())
            .env("NO_COLOR", "1")
            .env("POLICYHUB_SERVER", format!("http://{grpc}"))
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("POLICYHUB_") && name != "POLICYHUB_SERVER" {
                command.env_remove(name);
            }
        }
        command
    };
    let minted = command("policyhub")
        .args(["token", "--subject", "alice", "--role", "*:admin"])
        .output()
        .await
        .unwrap();
    assert!(
        minted.status.success(),
        "policyhub token: {}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    // Files, not pipes: what the block leaves running in the background
    // holds them open, and the block's end is its shell's exit, not theirs.
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
    let mut shell = command("sh");
    if !block.is_standalone() {
        shell.env("POLICYHUB_TOKEN", token);
    }
    let mut child = shell
        .args(["-e", "-x", "-c", &script])
        .stdin(Stdio::null())
        .stdout(log("stdout"))
        .stderr(log("stderr"))
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id().unwrap();
    let status = tokio::time::timeout(BLOCK_TIMEOUT, child.wait()).await;
    // Whatever the block left running (a watch, an agent) ends with it.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    let status = match status {
        Ok(status) => status.unwrap(),
        Err(_) => {
            return Err(format!(
                "still running after {BLOCK_TIMEOUT:?}\n--- stderr\n{}",
                read("stderr")
            ));
        }
    };
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "{status}\n--- stdout\n{}--- stderr (the commands as run)\n{}",
        read("stdout"),
        read("stderr")
    ))
}
