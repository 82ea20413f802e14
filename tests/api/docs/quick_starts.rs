//! The guides' first programs, run as a reader pastes them straight after
//! the README: against a server started as its quick start starts it
//! (authentication on, `./data` in the directory the commands are typed
//! in), with no token in the environment but the ones they mint.
//!
//! The Rust library's runs here; the Python, TypeScript and Go quick
//! starts need their SDK installed and run in `scripts/test-python-sdk`,
//! `scripts/test-typescript-sdk` and `scripts/test-go-sdk`; the shell blocks that start the agent's
//! and OpenFeature's guides are marked `standalone`, which `blocks` runs
//! with no token given. The last test holds each guide to that.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::policyhub_binary;

/// What the Rust library's first program prints once it holds the policy.
const ENFORCER_HOLDS_IT: &str = "up to Some(500)";

/// The body of the first fenced block in `page` between
/// `<!-- marker:start -->` and `<!-- marker:end -->`.
fn marked_block(page: &str, marker: &str) -> String {
    let text = std::fs::read_to_string(guide(page)).unwrap();
    let marked = text
        .split(&format!("<!-- {marker}:start -->\n"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- {marker}:end -->")).next())
        .unwrap_or_else(|| panic!("{page} has no block {marker}"));
    let mut body: String = marked
        .lines()
        .skip_while(|line| !line.starts_with("```"))
        .skip(1)
        .take_while(|line| line.trim() != "```")
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!body.is_empty(), "{page}'s block {marker} is empty");
    body.push('\n');
    body
}

fn guide(page: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/src/guides")
        .join(page)
}

/// What cargo sets for the test it runs (this package, its manifest, its
/// binaries, its build script's output): left to the build below, build
/// scripts that read them (ring's does) would see them change, run again,
/// and leave the next `cargo test --workspace` to rebuild every crate
/// above them.
const SET_FOR_THIS_TEST: [&str; 4] = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_", "OUT_DIR"];

/// The workspace's example `name`, built as `cargo test --workspace`
/// builds it (so this is quick after one), in this test's profile.
fn example_binary(name: &str) -> PathBuf {
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "--workspace", "--example", name])
        .args(["--profile", &profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (variable, _) in std::env::vars_os() {
        let set_for_this_test = variable.to_str().is_some_and(|variable| {
            SET_FOR_THIS_TEST
                .iter()
                .any(|set| variable.starts_with(set))
        });
        if set_for_this_test {
            build.env_remove(variable);
        }
    }
    let built = build.status().unwrap();
    assert!(built.success(), "cargo build --example {name}: {built}");
    profile_dir.join("examples").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_librarys_first_program_runs_as_pasted_with_authentication_on() {
    let enforcer = example_binary("enforcer");
    let workdir = tempfile::tempdir().unwrap();
    let app = crate::helpers::quick_start_app(workdir.path()).await;
    let bin_dir = policyhub_binary().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: &str| {
        let mut command = tokio::process::Command::new("sh");
        command
            .args(["-e", "-c", script])
            .current_dir(workdir.path())
            .env("PATH", &path)
            .env("HOME", workdir.path())
            .env("POLICYHUB_SERVER", format!("http://{}", app.address))
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("POLICYHUB_") && name != "POLICYHUB_SERVER" {
                command.env_remove(name);
            }
        }
        command
    };
    // A policy active in `payments`, as the publishing guide makes one.
    let published = shell(
        "export POLICYHUB_TOKEN=$(policyhub token --subject alice --role '*:admin')
         echo '{\"maxAmount\": 500}' | policyhub draft payments/card-limits -
         policyhub publish payments/card-limits --label 1.0.0 --activate --reason 'first release'",
    )
    .output()
    .await
    .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );

    let block = marked_block("runtime-library.md", "run-example-runtime");
    let run = "cargo run -p policyhub-runtime --example enforcer";
    assert!(block.contains(run), "the guide runs the example: {block}");
    let script = block.replace(run, &enforcer.display().to_string());
    let mut child = shell(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let held = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(ENFORCER_HOLDS_IT) {
                return true;
            }
        }
        false
    })
    .await;
    child.kill().await.ok();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), pipe.read_to_string(&mut stderr)).await;
    }
    assert!(
        matches!(held, Ok(true)),
        "the example never printed {ENFORCER_HOLDS_IT:?}:\n{stderr}"
    );
}

/// A guide whose first program talks to the server mints its token in it,
/// so that it runs straight after the README (which exports a token as
/// `TOKEN`, not as `POLICYHUB_TOKEN`): its first runnable block is
/// `standalone`, or its quick start is one the SDK scripts run (marked
/// `quick-start`) whose shell block mints the runtime's token.
#[test]
fn every_guides_first_program_mints_its_own_token() {
    for page in ["agent.md", "openfeature.md"] {
        let text = std::fs::read_to_string(guide(page)).unwrap();
        let first = super::blocks::blocks(&guide(page), &text)
            .into_iter()
            .find(|block| block.is_runnable())
            .unwrap_or_else(|| panic!("{page} has no runnable block"));
        assert!(
            first.is_standalone() && first.body.contains("policyhub token"),
            "{page}'s first runnable block must mint its token and be marked standalone:\n{}",
            first.body
        );
    }
    for page in ["python.md", "typescript.md", "go.md"] {
        let mint = marked_block(page, "quick-start");
        assert!(
            mint.contains("policyhub token --subject") && mint.contains("> runtime.token"),
            "{page}'s quick start mints the runtime's token:\n{mint}"
        );
    }
    let example = marked_block("runtime-library.md", "run-example-runtime");
    assert!(example.contains("policyhub token --subject"), "{example}");
}
