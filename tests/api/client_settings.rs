//! How the command line finds its server: flags over environment over the
//! client config file's contexts, timeouts that end a hung call, and shell
//! completions, all through the real binary.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::{Run, mint_token, policyhub_with};
use crate::helpers::{Backend, TestDatabase, spawn_on};

/// A server with authentication on, and a token file for an admin.
async fn secured() -> (crate::helpers::TestApp, tempfile::TempDir, String) {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let data_dir = database.data_dir.path().display().to_string();
    let app = spawn_on(database, |settings| settings.insecure = false).await;
    let minted = mint_token(&data_dir, "ops", "*:admin");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, minted.success()).unwrap();
    (app, dir, token_file.display().to_string())
}

#[track_caller]
fn lists(run: &Run) {
    assert!(
        run.success().starts_with("POLICY"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_the_environment_and_empty_variables_are_unset() {
    let (app, _dir, token_file) = secured().await;
    let server = format!("http://{}", app.address);
    // A stale token in the environment, the right one as a flag.
    lists(&policyhub_with(
        &[("POLICYHUB_SERVER", &server), ("POLICYHUB_TOKEN", "stale")],
        &["policies", "--token-file", &token_file],
    ));
    // Empty variables count as unset.
    lists(&policyhub_with(
        &[
            ("POLICYHUB_SERVER", &server),
            ("POLICYHUB_TOKEN", ""),
            ("POLICYHUB_TOKEN_FILE", &token_file),
        ],
        &["policies"],
    ));
    let empty = policyhub_with(
        &[("POLICYHUB_SERVER", &server), ("POLICYHUB_TOKEN_FILE", "")],
        &["policies"],
    );
    assert_eq!(empty.code, 1, "no token: refused, not a usage error");
    // A wrong server in the environment, the right one as a flag.
    lists(&policyhub_with(
        &[("POLICYHUB_SERVER", "http://127.0.0.1:1")],
        &["policies", "--server", &server, "--token-file", &token_file],
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_of_the_client_config_name_deployments() {
    let (app, dir, token_file) = secured().await;
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "current_context = \"broken\"\n\
             [contexts.broken]\nserver = \"http://127.0.0.1:1\"\nconnect_timeout = \"1s\"\n\
             [contexts.local]\nserver = \"http://{}\"\ntoken_file = \"{token_file}\"\n",
            app.address
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let with_config = |extra: &[(&str, &str)], args: &[&str]| {
        let mut env = vec![("POLICYHUB_CLIENT_CONFIG", config.as_str())];
        env.extend_from_slice(extra);
        policyhub_with(&env, args)
    };
    // The current context is used by default…
    let current = with_config(&[], &["policies"]);
    assert_eq!(current.code, 3, "{}", current.stderr);
    // …and --context or POLICYHUB_CONTEXT pick another; a flag still wins.
    lists(&with_config(&[], &["policies", "--context", "local"]));
    lists(&with_config(
        &[("POLICYHUB_CONTEXT", "local")],
        &["policies"],
    ));
    let overridden = with_config(
        &[("POLICYHUB_CONTEXT", "local")],
        &["policies", "--server", "http://127.0.0.1:1"],
    );
    assert_eq!(overridden.code, 3, "{}", overridden.stderr);
    let unknown = with_config(&[], &["policies", "--context", "prod"]);
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains(r#"context "prod" is not defined"#)
            && unknown.stderr.contains("broken, local"),
        "{}",
        unknown.stderr
    );
}

/// A listener that accepts connections and never answers: the command ends
/// within its request timeout (the HTTP/2 connection itself is lazy), with
/// exit code 3 and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_ends_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::thread::spawn(move || {
        // Hold every connection open, silent.
        let mut held = Vec::new();
        for stream in listener.incoming().take(2) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(10));
    });
    let checkout = tempfile::tempdir().unwrap();
    let release = checkout.path().join("policies/limits/v1.0.0");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(
        release.join("metadata.json"),
        r#"{"namespace": "team", "description": "limits", "owner": "team"}"#,
    )
    .unwrap();
    std::fs::write(release.join("policy-definition.yaml"), "max: 1\n").unwrap();
    let checkout = checkout.path().display().to_string();
    for args in [
        vec!["get", "team/limits", "--request-timeout", "1s"],
        vec!["sync", &checkout, "--dry-run", "--request-timeout", "1s"],
    ] {
        let started = Instant::now();
        let run = policyhub_with(&[("POLICYHUB_SERVER", &server)], &args);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{args:?} ended within its timeout"
        );
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("no answer within the request timeout (--request-timeout)")
                && run.stderr.contains("hint: the server took the call"),
            "{args:?}: {}",
            run.stderr
        );
    }
    drop(accepted);
    let bad = policyhub_with(
        &[
            ("POLICYHUB_SERVER", &server),
            ("POLICYHUB_REQUEST_TIMEOUT", "soon"),
        ],
        &["policies"],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_generated_for_bash_zsh_and_fish_and_o_is_output() {
    for shell in ["bash", "zsh", "fish"] {
        let script = policyhub_with(&[], &["completion", shell]);
        assert!(
            script.success().contains("policyhub") && script.stdout.contains("rollback"),
            "{shell}: {}",
            script.stdout
        );
    }
    let app = crate::helpers::spawn_app(Backend::Sqlite).await;
    app.release("team", "limits", json!({"max": 1}), true).await;
    let server = format!("http://{}", app.address);
    let listed = policyhub_with(
        &[("POLICYHUB_SERVER", &server)],
        &["policies", "-o", "json"],
    );
    assert_eq!(listed.json()["policies"][0]["name"], "limits");
}
