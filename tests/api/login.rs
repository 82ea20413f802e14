//! `policyhub login` and `logout` against a real OpenID provider, the test
//! playing the person at the browser; then commands against a server that
//! trusts the provider, with the sign-in's ID token renewed as it expires.

use std::{
    io::BufRead,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::cli::{Run, client_command, policyhub_with};
use crate::helpers::{Backend, Reaped, free_port, policyhub_binary, spawn_app, start_serving};
use crate::oidc::{Browser, OidcProvider};

/// The scopes the tests sign in with: the groups claim the bindings match.
const SCOPES: [&str; 8] = [
    "--scope",
    "openid",
    "--scope",
    "offline_access",
    "--scope",
    "email",
    "--scope",
    "groups",
];

/// A machine with a client config file of its own.
struct Workstation {
    dir: tempfile::TempDir,
}

impl Workstation {
    fn new() -> Self {
        Workstation {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("policyhub").join("config.toml")
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(self.config()).unwrap_or_default()
    }

    /// A value of the current context, as written.
    fn setting(&self, key: &str) -> Option<String> {
        let document: toml_edit::DocumentMut = self.config_text().parse().unwrap();
        let context = document.get("current_context")?.as_str()?.to_owned();
        document["contexts"][context.as_str()]
            .get(key)
            .and_then(|item| item.as_str())
            .map(str::to_owned)
    }

    fn env<'a>(&'a self, server: &'a str) -> Vec<(&'a str, String)> {
        vec![
            (
                "POLICYHUB_CLIENT_CONFIG",
                self.config().display().to_string(),
            ),
            ("POLICYHUB_SERVER", server.to_owned()),
        ]
    }

    /// Runs `policyhub ARGS` against `server` on this machine.
    fn run(&self, server: &str, args: &[&str]) -> Run {
        let env = self.env(server);
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        policyhub_with(&env, args)
    }

    /// Starts `policyhub login ARGS`, which waits for the person.
    fn start_login(&self, args: &[&str]) -> Login {
        self.start_login_at("http://127.0.0.1:1", args)
    }

    /// Starts `policyhub login ARGS` with `server` as the server.
    fn start_login_at(&self, server: &str, args: &[&str]) -> Login {
        let env = self.env(server);
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        let mut child = client_command(&env, &[&["login"], args].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start policyhub login");
        let stderr = child.stderr.take().unwrap();
        let (lines, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let line = line.unwrap_or_default();
                all.push_str(&line);
                all.push('\n');
                lines.send(line).ok();
            }
            all
        });
        Login {
            child,
            lines: receiver,
            reader,
        }
    }
}

/// A `policyhub login` waiting for the person.
struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<String>,
}

impl Login {
    /// The first line of its prompt that contains `text`.
    fn prompt_line(&self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("policyhub login printed no line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// The verification URI and the user code of a device sign-in.
    fn device_prompt(&self) -> (String, String) {
        let line = self.prompt_line("enter the code");
        let words: Vec<&str> = line.split_whitespace().collect();
        let uri = words[words.iter().position(|word| *word == "open").unwrap() + 1];
        (uri.to_owned(), words.last().unwrap().to_string())
    }

    /// The URL a loopback sign-in asks to open.
    fn loopback_url(&self) -> String {
        self.prompt_line("    http").trim().to_owned()
    }

    /// How it ended.
    fn finish(self) -> Run {
        let output = self.child.wait_with_output().unwrap();
        Run {
            code: output.status.code().expect("exited"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: self.reader.join().unwrap(),
        }
    }
}

/// A `policyhub serve` that trusts `provider`'s ID tokens and binds its
/// `payments-operators` group to `payments:operator`; stopped when
/// dropped.
struct TrustingServer {
    _child: Reaped,
    url: String,
    /// Its metrics port.
    metrics: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl TrustingServer {
    async fn start(provider: &OidcProvider) -> Self {
        Self::start_with(provider, "").await
    }

    /// With `extra` lines in the provider's `[[auth.issuers]]` entry.
    async fn start_with(provider: &OidcProvider, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bindings = dir.path().join("bindings.toml");
        std::fs::write(
            &bindings,
            format!(
                r#"[[bindings]]
name = "payments-operators"
issuer = "{issuer}"
claim = "groups"
value = "payments-operators"
grants = ["payments:operator"]
"#,
                issuer = provider.issuer
            ),
        )
        .unwrap();
        let config = dir.path().join("policyhub.toml");
        std::fs::write(
            &config,
            format!(
                r#"[auth]
bindings_file = "{bindings}"

[[auth.issuers]]
issuer = "{issuer}"
audiences = ["policyhub"]
client_id = "policyhub"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
claims = ["groups", "email"]
min_refresh_interval = "1s"
{extra}
"#,
                bindings = bindings.display(),
                issuer = provider.issuer
            ),
        )
        .unwrap();
        let (port, metrics) = (free_port(), free_port());
        let mut command = std::process::Command::new(policyhub_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .env("POLICYHUB_METRICS_LISTEN", format!("127.0.0.1:{metrics}"));
        let (child, _) = start_serving(command, port).await;
        TrustingServer {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
            metrics: format!("127.0.0.1:{metrics}").parse().unwrap(),
            _dir: dir,
        }
    }
}

/// Signs in with the device grant as `login`, approving in the browser.
async fn device_login(workstation: &Workstation, provider: &OidcProvider, login: &str) -> Run {
    let args = [&["--device", "--issuer", &provider.issuer][..], &SCOPES].concat();
    approved_device_login(workstation.start_login(&args), provider, login).await
}

/// Approves the device sign-in `waiting` shows, as `login` in the browser.
async fn approved_device_login(waiting: Login, provider: &OidcProvider, login: &str) -> Run {
    let (uri, code) = waiting.device_prompt();
    assert!(uri.starts_with(&provider.issuer), "{uri}");
    let done = Browser::new()
        .approve_device(&uri, &code, login, true)
        .await;
    assert!(done.status.is_success(), "{done:#?}");
    tokio::task::spawn_blocking(move || waiting.finish())
        .await
        .unwrap()
}

#[track_caller]
fn assert_mode_0600(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
}

#[track_caller]
fn assert_no_tokens(run: &Run, tokens: &[String]) {
    for token in tokens {
        assert!(
            !run.stdout.contains(token.as_str()) && !run.stderr.contains(token.as_str()),
            "a token was printed: {}{}",
            run.stdout,
            run.stderr
        );
    }
}

/// The life of a sign-in on the CLI's side: the device grant approved as
/// bob through the provider's own pages; the tokens kept mode 0600 and
/// never printed; the ID token renewed by the commands themselves as it
/// expires; logout revokes the refresh token; a session that cannot be
/// renewed fails saying to sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sign_in_is_kept_renewed_and_ended() {
    let provider = OidcProvider::start(&[("OIDC_ID_TOKEN_TTL", "5")]);
    let workstation = Workstation::new();
    let app = spawn_app(Backend::Sqlite).await;
    let server = format!("http://{}", app.address);

    let login = device_login(&workstation, &provider, "bob").await;
    assert_eq!(login.code, 0, "{}{}", login.stdout, login.stderr);
    assert!(
        login.stdout.contains(&format!(
            "signed in to {} as bob (context default)",
            provider.issuer
        )),
        "{}",
        login.stdout
    );
    assert_mode_0600(&workstation.config());
    let id_token = workstation
        .setting("id_token")
        .expect("an ID token is kept");
    let refresh_token = workstation
        .setting("refresh_token")
        .expect("a refresh token is kept");
    assert_eq!(workstation.setting("issuer").unwrap(), provider.issuer);
    assert_eq!(workstation.setting("client_id").unwrap(), "policyhub");
    assert!(workstation.setting("expiry").is_some());
    assert_no_tokens(&login, &[id_token.clone(), refresh_token.clone()]);

    // The ID token expires within a minute: the command renews it first.
    let run = workstation.run(&server, &["list-policies"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // (Within the same second the new ID token may be the same bytes: the
    // refresh token the provider rotates shows the renewal.)
    assert_ne!(
        workstation.setting("refresh_token").unwrap(),
        refresh_token,
        "the command renewed the session, and kept the new refresh token"
    );
    let renewed = workstation.setting("id_token").unwrap();
    assert_no_tokens(&run, std::slice::from_ref(&renewed));
    assert_mode_0600(&workstation.config());

    // Once the first tokens have expired for good, a command still works.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = workstation.run(&server, &["list-policies"]);
    assert_eq!(later.code, 0, "{}{}", later.stdout, later.stderr);
    assert_ne!(workstation.setting("id_token").unwrap(), renewed);

    // Commands renewing the session at once take turns: none spends a
    // refresh token another already spent (the provider would end the
    // sign-in).
    let parallel: Vec<Run> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| workstation.run(&server, &["list-policies"])))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for run in parallel {
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
    let after_parallel = workstation.run(&server, &["list-policies"]);
    assert_eq!(
        after_parallel.code, 0,
        "{}{}",
        after_parallel.stdout, after_parallel.stderr
    );

    // Logout revokes the refresh token and removes the session.
    let signed_in = workstation.config_text();
    let refresh_token = workstation.setting("refresh_token").unwrap();
    let logout = workstation.run(&server, &["logout"]);
    assert_eq!(logout.code, 0, "{}{}", logout.stdout, logout.stderr);
    assert!(
        logout.stdout.contains("signed out (context default)") && logout.stderr.is_empty(),
        "{}{}",
        logout.stdout,
        logout.stderr
    );
    for key in ["id_token", "refresh_token", "expiry"] {
        assert!(workstation.setting(key).is_none(), "{key} is removed");
    }
    assert_eq!(
        workstation.setting("issuer").unwrap(),
        provider.issuer,
        "the provider is kept for the next sign-in"
    );
    let (status, answer) = provider.refresh(&refresh_token).await;
    assert_eq!(answer["error"], "invalid_grant", "{status}: {answer}");
    let again = workstation.run(&server, &["logout"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("not signed in"), "{}", again.stdout);

    // A session whose refresh token was revoked cannot be renewed.
    std::fs::write(workstation.config(), signed_in).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stale = workstation.run(&server, &["list-policies"]);
    assert_eq!(stale.code, 1, "{}{}", stale.stdout, stale.stderr);
    assert!(
        stale
            .stderr
            .contains("error: the sign-in of context default has expired: renewing it failed:"),
        "{}",
        stale.stderr
    );
    assert!(stale.stderr.contains("invalid_grant"), "{}", stale.stderr);
    assert!(
        stale
            .stderr
            .contains("hint: sign in again with `policyhub login`"),
        "{}",
        stale.stderr
    );
}

/// A server that trusts the provider offers it to `policyhub login` and
/// takes the sign-in's ID token: whoami
/// shows bob and the grant his group is bound to, also once the token was
/// renewed and signed by a key the provider took up meanwhile; a token of a
/// flag or variable comes first; after logout a command is refused, saying
/// to sign in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_trusts_the_provider_takes_the_sign_in() {
    let provider = OidcProvider::start(&[("OIDC_ID_TOKEN_TTL", "5")]);
    let workstation = Workstation::new();
    let server = TrustingServer::start(&provider).await;

    // No issuer named: the server says which provider it trusts, with its
    // client and scopes.
    let waiting = workstation.start_login_at(&server.url, &["--device"]);
    let login = approved_device_login(waiting, &provider, "bob").await;
    assert_eq!(login.code, 0, "{}{}", login.stdout, login.stderr);
    assert_eq!(workstation.setting("issuer").unwrap(), provider.issuer);
    assert!(
        workstation
            .config_text()
            .contains(r#"scopes = ["openid", "profile", "email", "groups", "offline_access"]"#),
        "{}",
        workstation.config_text()
    );

    let whoami = workstation.run(&server.url, &["whoami", "payments"]);
    assert_eq!(whoami.code, 0, "{}{}", whoami.stdout, whoami.stderr);
    for line in [
        "subject: bob\n".to_owned(),
        format!("issuer:  {}\n", provider.issuer),
        "grants:  payments:operator\n".to_owned(),
    ] {
        assert!(whoami.stdout.contains(&line), "{line:?}: {}", whoami.stdout);
    }

    for run in [
        workstation.run(&server.url, &["whoami", "--token", "not-a-jwt"]),
        policyhub_with(
            &[
                (
                    "POLICYHUB_CLIENT_CONFIG",
                    &workstation.config().display().to_string(),
                ),
                ("POLICYHUB_SERVER", &server.url),
                ("POLICYHUB_TOKEN", "not-a-jwt"),
            ],
            &["whoami"],
        ),
    ] {
        assert_eq!(
            run.code, 1,
            "the token given comes first: {}{}",
            run.stdout, run.stderr
        );
    }

    provider.rotate_key(false).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let later = workstation.run(&server.url, &["whoami"]);
    assert_eq!(later.code, 0, "{}{}", later.stdout, later.stderr);
    assert!(later.stdout.contains("subject: bob\n"), "{}", later.stdout);

    let logout = workstation.run(&server.url, &["logout"]);
    assert_eq!(logout.code, 0, "{}{}", logout.stdout, logout.stderr);
    let after = workstation.run(&server.url, &["whoami"]);
    assert_eq!(after.code, 1, "{}{}", after.stdout, after.stderr);
    assert!(
        after.stderr.contains("sign in with `policyhub login`"),
        "{}",
        after.stderr
    );
}

/// The provider goes down: the server fetches its keys in vain, says so in
/// its metrics, and goes on verifying tokens signed by the keys it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_goes_down_leaves_its_known_keys_verifying() {
    let provider = OidcProvider::start(&[]);
    let issuer = provider.issuer.clone();
    let workstation = Workstation::new();
    let server = TrustingServer::start_with(
        &provider,
        "refresh_interval = \"1s\"\nkeys_grace_period = \"1h\"",
    )
    .await;
    let login = device_login(&workstation, &provider, "bob").await;
    assert_eq!(login.code, 0, "{}{}", login.stdout, login.stderr);
    let whoami = workstation.run(&server.url, &["whoami"]);
    assert_eq!(whoami.code, 0, "{}{}", whoami.stdout, whoami.stderr);

    drop(provider);
    let failures =
        format!("policyhub_auth_key_fetches_total{{issuer=\"{issuer}\",outcome=\"failure\"}}");
    let mut failed = false;
    for _ in 0..100 {
        let metrics = crate::observability::scrape(server.metrics).await;
        failed = metrics
            .lines()
            .any(|line| line.starts_with(&failures) && !line.ends_with(" 0"));
        if failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failed, "a failed fetch is counted");
    // The ID token of the sign-in (valid an hour) still verifies: the CLI
    // has nothing to renew, the server still holds the provider's key.
    let later = workstation.run(&server.url, &["whoami"]);
    assert_eq!(later.code, 0, "{}{}", later.stdout, later.stderr);
    assert!(later.stdout.contains("subject: bob\n"), "{}", later.stdout);
}

/// The default sign-in: the CLI listens on a loopback port, the person
/// signs in at the URL it prints, and the browser comes back to it with
/// the code; a token of a flag or variable still comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_sign_in_takes_the_code_the_browser_brings_back() {
    let provider = OidcProvider::start(&[]);
    let workstation = Workstation::new();
    std::fs::create_dir_all(workstation.config().parent().unwrap()).unwrap();
    std::fs::write(
        workstation.config(),
        "# my deployments\ncurrent_context = \"staging\"\n\n[contexts.staging]\n\
         request_timeout = \"10s\" # slow network\n",
    )
    .unwrap();

    let args = [&["--issuer", &provider.issuer][..], &SCOPES].concat();
    let waiting = workstation.start_login(&args);
    let url = waiting.loopback_url();
    assert!(
        url.starts_with(&format!("{}/auth?", provider.issuer)),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let browser = Browser::new();
    let page = browser.open(&url).await;
    let back = browser.sign_in(page, "alice", true).await;
    assert!(
        back.url.as_str().starts_with("http://127.0.0.1:"),
        "{back:#?}"
    );
    assert!(back.body.contains("Signed in"), "{back:#?}");
    let login = tokio::task::spawn_blocking(move || waiting.finish())
        .await
        .unwrap();
    assert_eq!(login.code, 0, "{}{}", login.stdout, login.stderr);
    assert!(
        login.stdout.contains("as alice (context staging)"),
        "{}",
        login.stdout
    );
    let text = workstation.config_text();
    assert!(text.starts_with("# my deployments\n"), "{text}");
    assert!(
        text.contains("request_timeout = \"10s\" # slow network"),
        "{text}"
    );
    assert_mode_0600(&workstation.config());
    let id_token = workstation.setting("id_token").unwrap();
    assert_no_tokens(&login, std::slice::from_ref(&id_token));

    // An ID token far from expiry is sent as it is.
    let app = spawn_app(Backend::Sqlite).await;
    let run = workstation.run(&format!("http://{}", app.address), &["whoami"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(workstation.setting("id_token").unwrap(), id_token);
}

/// Runs `policyhub login ARGS` to its end, no one at the browser.
fn login_alone(workstation: &Workstation, args: &[&str]) -> Run {
    workstation.run("http://127.0.0.1:1", &[&["login"], args].concat())
}

/// What cannot sign in fails within its bounds, says why and what to do,
/// and keeps no session: an issuer without discovery, a client the
/// provider does not know, a person who denies the request, a device code
/// no one enters in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_that_cannot_succeed_says_why() {
    let provider = OidcProvider::start(&[("OIDC_DEVICE_CODE_TTL", "2")]);
    let workstation = Workstation::new();

    let no_discovery = format!("{}/nothing-here", provider.issuer);
    let run = login_alone(&workstation, &["--device", "--issuer", &no_discovery]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "error: reading the OpenID configuration of {no_discovery} at \
             {no_discovery}/.well-known/openid-configuration: the answer is 404 Not Found"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: check --issuer"),
        "{}",
        run.stderr
    );

    let run = login_alone(&workstation, &["--issuer", "http://login.example.com"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("http:// on this machine only"),
        "{}",
        run.stderr
    );
    let run = login_alone(&workstation, &[]);
    assert_eq!(run.code, 3, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "error: no issuer is named (--issuer, POLICYHUB_ISSUER, the context's issuer): \
             asking the server which it trusts: cannot reach the server at http://127.0.0.1:1"
        ),
        "{}",
        run.stderr
    );
    let app = spawn_app(Backend::Sqlite).await;
    let run = workstation.run(&format!("http://{}", app.address), &["login"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("no OpenID provider to sign in with: the server offers none"),
        "{}",
        run.stderr
    );

    let run = login_alone(
        &workstation,
        &[
            "--device",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "nobody",
        ],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "error: asking for a device code: {} refused: invalid_client",
            provider.issuer
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("check --client-id"), "{}", run.stderr);

    // The person denies the request at the consent page.
    let waiting = workstation.start_login(&["--issuer", &provider.issuer]);
    let url = waiting.loopback_url();
    let browser = Browser::new();
    let page = browser.open(&url).await;
    let back = browser.sign_in(page, "alice", false).await;
    assert!(back.body.contains("Not signed in"), "{back:#?}");
    let run = tokio::task::spawn_blocking(move || waiting.finish())
        .await
        .unwrap();
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("error: signing in: the sign-in was denied (access_denied"),
        "{}",
        run.stderr
    );

    // No one enters the device code before it expires.
    let started = std::time::Instant::now();
    let run = login_alone(&workstation, &["--device", "--issuer", &provider.issuer]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "error: signing in: the code was not entered and approved at {} in time",
            provider.issuer
        )),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // The browser never comes back.
    let run = login_alone(
        &workstation,
        &["--issuer", &provider.issuer, "--timeout", "1s"],
    );
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("did not come back from") && run.stderr.contains("within 1s"),
        "{}",
        run.stderr
    );

    assert!(
        !workstation.config().exists(),
        "no sign-in, no client config file: {}",
        workstation.config_text()
    );
}

/// `login -o json` tells a script who signed in, where and until when (the
/// context, the issuer, the subject, the ID token's expiry), and never a
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_prints_the_sign_in_as_json_without_a_token() {
    let provider = OidcProvider::start(&[]);
    let workstation = Workstation::new();
    let args = [
        &["--device", "--issuer", &provider.issuer, "-o", "json"][..],
        &SCOPES,
    ]
    .concat();
    let login = approved_device_login(workstation.start_login(&args), &provider, "bob").await;
    let printed = login.json();
    assert_eq!(
        printed,
        serde_json::json!({
            "context": "default",
            "issuer": provider.issuer,
            "subject": "bob",
            "expiry": workstation.setting("expiry").expect("an expiry is kept"),
        })
    );
    let tokens = [
        workstation
            .setting("id_token")
            .expect("an ID token is kept"),
        workstation
            .setting("refresh_token")
            .expect("a refresh token is kept"),
    ];
    assert_no_tokens(&login, &tokens);
}
