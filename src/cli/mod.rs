//! The `policyhub` command line.
//!
//! `serve` and `migrate` run the server. The client commands (one per RPC,
//! plus `sync`) take the `Connection` flags and `--output table|json`;
//! `verify`, `token` and `keys generate` work offline. How they fail, and
//! with which exit code, is decided in one place: `failure`.

/// `print!` for command output, through `output::write_stdout`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` for command output, through `output::write_stdout`.
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod agent;
mod alerts;
mod archive;
mod args;
mod backup;
mod connection;
mod context;
mod decisions;
mod diff;
mod dispatch;
mod document;
mod failure;
mod fleet;
mod health;
mod history;
mod inspect;
mod json;
mod keys;
mod lifecycle;
mod login;
mod oidc;
mod opa;
mod output;
mod proofs;
mod rollout;
mod schedule;
mod schema;
mod session;
mod subscription;
mod sync;
mod token;
mod verify;
mod verify_log;
mod watch;
mod witness;

use connection::{AuthChannel, Connection};
use output::Output;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{DatabaseOverrides, Overrides, Settings};
use crate::startup::{self, Application};

/// policyhub: signed, versioned policies for runtimes.
#[derive(Debug, Parser)]
#[command(
    name = "policyhub",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 the operation failed or the server refused it; \
                  2 usage error; 3 the server cannot be reached or is unavailable."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every client command takes: where the server is, and how to print.
#[derive(Debug, clap::Args)]
struct Client {
    #[command(flatten)]
    connection: Connection,
    /// How to print the result: a table for people, json for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl Client {
    /// The channel, and how to print.
    async fn connect(&self) -> anyhow::Result<(AuthChannel, Output)> {
        Ok((self.connection.connect().await?, self.output))
    }

    /// Connects, then runs `command` over the channel: the one place a
    /// client command connects.
    async fn run(&self, command: impl ClientCommand) -> anyhow::Result<ExitCode> {
        let (channel, output) = self.connect().await?;
        command.run(channel, output).await
    }
}

/// A client command, as mini-redis's commands apply themselves: its
/// arguments make its calls over a connected channel and print the replies.
/// Each lives in the module of its concern; `Client::run` connects.
trait ClientCommand {
    /// Makes the calls, prints as `output` says, and tells how the process
    /// exits.
    async fn run(self, channel: AuthChannel, output: Output) -> anyhow::Result<ExitCode>;
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// A TOML settings file; POLICYHUB_* variables and flags override it.
        #[arg(long, env = "POLICYHUB_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Follow namespaces as a runtime and hand verified policy to local
    /// processes: a localhost HTTP API, files swapped whole per revision, a
    /// command run after each swap.
    Agent {
        #[command(flatten)]
        args: Box<agent::AgentArgs>,
    },
    /// Witness logs (C2SP tlog-witness): cosign a log's checkpoint only when
    /// its tree extends the last one cosigned.
    Witness {
        #[command(flatten)]
        args: Box<witness::WitnessArgs>,
    },
    /// Apply pending database migrations and exit (serve also applies them).
    Migrate {
        /// A TOML settings file.
        #[arg(long, env = "POLICYHUB_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: DatabaseOverrides,
    },
    /// Write the next draft of a policy from a JSON or YAML file.
    Draft {
        #[command(flatten)]
        args: lifecycle::DraftArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Discard the open draft (or --version N); its number is not reused.
    DiscardDraft {
        #[command(flatten)]
        args: lifecycle::DiscardDraftArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Set (or --remove) the JSON Schema every version must satisfy to be
    /// published or activated.
    SetSchema {
        #[command(flatten)]
        args: schema::SetSchemaArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Publish a draft: sign it, give it a release label, optionally activate it.
    Publish {
        #[command(flatten)]
        args: lifecycle::PublishArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Activate published versions of one or several policies, atomically.
    Activate {
        #[command(flatten)]
        args: lifecycle::ActivateArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Return a policy to the version active before, or to --to-version N.
    Rollback {
        #[command(flatten)]
        args: lifecycle::RollbackArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show the active bundle, verified against the JWKS, with its body.
    #[command(visible_alias = "get")]
    GetActive {
        #[command(flatten)]
        args: inspect::GetActiveArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show one policy: its active, draft and latest versions, what its
    /// runtimes made of the active one, and its schema.
    GetPolicy {
        #[command(flatten)]
        args: inspect::GetPolicyArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show one version, by --version or --label.
    GetVersion {
        #[command(flatten)]
        args: inspect::GetVersionArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List the versions of a policy, newest first.
    #[command(visible_alias = "versions")]
    ListVersions {
        #[command(flatten)]
        args: inspect::ListVersionsArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List policies with their active and draft versions.
    #[command(visible_alias = "policies")]
    ListPolicies {
        #[command(flatten)]
        args: inspect::ListPoliciesArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List the audit log, newest first.
    #[command(visible_alias = "events")]
    ListEvents {
        #[command(flatten)]
        args: history::ListEventsArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List the runtimes that watch a namespace, with what each applied.
    #[command(visible_alias = "runtimes")]
    ListRuntimes {
        #[command(flatten)]
        args: fleet::ListRuntimesArgs,
        #[command(flatten)]
        client: Client,
    },
    /// List the decisions OPAs of a namespace uploaded, newest first.
    #[command(visible_alias = "decisions")]
    ListDecisions {
        #[command(flatten)]
        args: decisions::ListDecisionsArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show what a version of a policy served to OPA would decide
    /// differently: its OPAs' recorded decisions replayed against the
    /// active bundle and against the version.
    AnalyzeImpact {
        #[command(flatten)]
        args: decisions::AnalyzeImpactArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show whether a policy's active version landed: how many runtimes
    /// applied it, rejected it (with the errors) or are still pending.
    #[command(visible_alias = "status")]
    GetPolicyStatus {
        #[command(flatten)]
        args: fleet::GetPolicyStatusArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Show what changed between two versions of a policy.
    #[command(visible_alias = "diff")]
    DiffVersions {
        #[command(flatten)]
        args: diff::DiffVersionsArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Publish the releases of a checkout: policies/<name>/v<semver>/.
    ///
    /// Each release not yet in the hub is drafted and published under its
    /// label; one already released with the same digest is skipped; one
    /// released with another digest is an error. Nothing is published
    /// unless every file is valid. Exits 0 only when every release was
    /// delivered.
    Sync {
        #[command(flatten)]
        args: sync::SyncArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Verify a signed bundle offline against a JWKS.
    ///
    /// The bundle is a JWS, or a JSON object with a "jws" member (the output
    /// of GetActive or GetVersion). The JWKS is the output of GetSigningKeys.
    /// Exits 0 when the bundle verifies, 1 when it does not.
    Verify {
        /// The JWKS file.
        #[arg(long)]
        jwks: PathBuf,
        /// The bundle file; `-` or nothing reads standard input.
        bundle: Option<PathBuf>,
    },
    /// Follow the active bundles of a namespace, as a runtime does.
    ///
    /// Prints every whole state as it is activated, each bundle verified;
    /// resumes from the last revision after any failure, with backoff.
    #[command(visible_alias = "watch")]
    WatchActive {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Mint a bearer token signed with an HS256 secret: by default the
    /// local secret the server generated into its data directory.
    Token {
        #[command(flatten)]
        args: token::TokenArgs,
    },
    /// Print a completion script for a shell: `source <(policyhub completion bash)`,
    /// or write it where the shell looks for completions.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Move versions through the fleet step by step: start, status, list,
    /// pause, resume, promote, abort.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Hand the server an Alertmanager notification, as its webhook does
    /// (ReceiveAlerts).
    ///
    /// Each firing alert aborts or pauses the running rollouts its labels
    /// match (namespace, and policy and rollout when given), as its
    /// policyhub_action label says; resolved alerts change nothing. The
    /// notification is a file (-f), as Alertmanager posts it, or one firing
    /// alert of the labels given. Needs the operator role in each namespace
    /// the alerts name.
    ReceiveAlerts {
        #[command(flatten)]
        args: alerts::ReceiveAlertsArgs,
        #[command(flatten)]
        client: Client,
    },
    #[command(flatten)]
    Schedule(schedule::ScheduleCommand),
    /// Tell endpoints what happened: signed webhooks of chosen event kinds
    /// (create, get, list, update, delete, test, deliveries).
    Subscription {
        #[command(subcommand)]
        command: subscription::SubscriptionCommand,
    },
    /// Sign in with the company's OpenID provider, by default the one the
    /// server offers (ListIdentityProviders): the ID token it gives is then
    /// the bearer token of every command, renewed as it expires.
    ///
    /// By default, prints a URL to open in a browser and waits for the
    /// browser to come back to 127.0.0.1 (authorization code with PKCE);
    /// with --device, prints a URL and a code to enter on any device. The
    /// tokens are kept in the context of the client config file (mode 0600).
    /// A token from --token, --token-file or POLICYHUB_TOKEN still comes
    /// first.
    Login {
        #[command(flatten)]
        args: login::LoginArgs,
    },
    /// Sign out: revoke the refresh token at the provider and remove the
    /// tokens from the context.
    Logout {
        #[command(flatten)]
        args: login::LogoutArgs,
    },
    /// Print who the token speaks for and its grants, and with a namespace
    /// the methods it may call there (WhoAmI), as `kubectl auth whoami` and
    /// `kubectl auth can-i --list` do.
    Whoami {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: inspect::WhoamiArgs,
    },
    /// What the token may do, as `kubectl auth` answers it: `can-i`.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Ask the server's gRPC health service whether it serves, as a probe
    /// does (grpc.health.v1 Check); exits 0 when it answers SERVING. For
    /// exec probes: Kubernetes' own gRPC probe cannot speak TLS.
    Health {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: health::HealthArgs,
    },
    /// Print every public key that ever signed a bundle (the JWKS).
    GetSigningKeys {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: inspect::GetSigningKeysArgs,
    },
    /// Ask the server to sign with a newly generated key from now on (admin
    /// in every namespace). Bundles signed before keep verifying.
    RotateSigningKey {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: keys::RotateSigningKeyArgs,
    },
    /// Revoke a signing key that no longer signs (admin in every
    /// namespace): it leaves the JWKS, the versions it signed are signed
    /// again by the signing key, and runtimes refuse what it signs.
    RevokeSigningKey {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: keys::RevokeSigningKeyArgs,
    },
    /// Declare this deployment restored from a backup (admin in every
    /// namespace): records a RESTORED event and signs a checkpoint over it,
    /// so that runtimes which saw the history the backup lost accept the
    /// restored log, and say so, instead of refusing it.
    RecordRestore {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: backup::RecordRestoreArgs,
    },
    /// Verify the hash chain of the whole event log, from the first event to
    /// the last, every signed checkpoint, and the log's Merkle tree
    /// recomputed from the events against every checkpoint's note (reader in
    /// every namespace); exits 1 naming the first event that does not follow
    /// the one before it, or the first checkpoint or note that does not
    /// hold.
    VerifyLog {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: verify_log::VerifyLogArgs,
    },
    /// List the signed checkpoints of the event log, newest first (reader in
    /// every namespace).
    ListCheckpoints {
        #[command(flatten)]
        args: history::ListCheckpointsArgs,
        #[command(flatten)]
        client: Client,
    },
    /// Print the RFC 9162 inclusion proof of an event in the log's Merkle
    /// tree, with the event's canonical form (the leaf's bytes) and, for the
    /// newest tree, its signed checkpoint note (reader in the event's
    /// namespace).
    GetInclusionProof {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: proofs::GetInclusionProofArgs,
    },
    /// Print the RFC 9162 consistency proof that the log's Merkle tree of
    /// one size extends the one of a smaller size (reader in any
    /// namespace).
    GetConsistencyProof {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: proofs::GetConsistencyProofArgs,
    },
    /// Print the newest restore the log's tree records (a RESTORED event,
    /// which `record-restore` writes) with its RFC 9162 inclusion proof, and
    /// for the newest tree its signed checkpoint note: how a runtime holding
    /// a tree the restored log does not extend learns that the restore was
    /// declared (reader in any namespace). NOT_FOUND when the tree records
    /// none.
    GetRestoreProof {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: proofs::GetRestoreProofArgs,
    },
    /// Print the RFC 9162 inclusion proofs of a bundle's events in the log's
    /// Merkle tree: its version's PUBLISHED event and the ACTIVATED or
    /// ROLLED_BACK event that made it active at its revision, both in one
    /// tree (reader).
    GetBundleProof {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: proofs::GetBundleProofArgs,
    },
    /// Write a namespace served to OPA as the signed bundle OPA downloads
    /// (GetOpaBundle), a gzipped tarball (reader).
    GetOpaBundle {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: opa::GetOpaBundleArgs,
    },
    /// Write the discovery bundle an OPA of a namespace served to OPA takes
    /// its configuration from (GetOpaDiscovery), a gzipped tarball whose
    /// data.json is the configuration (reader).
    GetOpaDiscovery {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: opa::GetOpaDiscoveryArgs,
    },
    /// Print the public keys OPA bundles are signed with, the signer first;
    /// `-o json` gives each in PEM, as OPA's keys setting takes it.
    GetOpaSigningKeys {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: opa::GetOpaSigningKeysArgs,
    },
    /// Save a consistent copy of the server's SQLite database, taken while
    /// it serves (admin in every namespace); restore by starting a server on
    /// the file. PostgreSQL deployments use pg_dump.
    Backup {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: backup::BackupArgs,
    },
    /// Write an archive of namespaces (every namespace and the whole log
    /// when none is named) to standard output: their policies, versions and
    /// signatures, rollouts and events, with the log's checkpoints and the
    /// keys that signed (reader in each; "*:reader" for all).
    Export {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: archive::ExportArgs,
    },
    /// Load an archive into a server where its namespaces are empty, in one
    /// transaction (admin in every namespace).
    Import {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: archive::ImportArgs,
    },
    /// Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) and print its
    /// key id, offline.
    GenerateKey {
        #[command(flatten)]
        args: keys::GenerateKeyArgs,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(renamed(std::env::args().collect())) {
        Ok(cli) => cli,
        // --help and --version.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let args: Vec<String> = std::env::args().collect();
            eprint!("{}", failure::report_usage(&error, &args));
            return failure::usage_exit_code();
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprint!("{}", failure::report(&error));
            failure::exit_code(&error)
        }
    }
}

/// Commands that were renamed after the RPCs they call, by their old
/// names: they keep working, with a warning, as kubectl's deprecated
/// aliases do.
const RENAMED: [(&str, &str, &str); 3] = [
    ("keys", "list", "get-signing-keys"),
    ("keys", "rotate", "rotate-signing-key"),
    ("keys", "generate", "generate-key"),
];

/// The command line with an old command name replaced by its new one.
fn renamed(mut args: Vec<String>) -> Vec<String> {
    let found = RENAMED.iter().find(|(group, command, _)| {
        args.get(1).map(String::as_str) == Some(*group)
            && args.get(2).map(String::as_str) == Some(*command)
    });
    if let Some((group, command, new)) = found {
        eprintln!("warning: `policyhub {group} {command}` is deprecated: use `policyhub {new}`");
        args.splice(1..3, [new.to_string()]);
    }
    args
}

/// `policyhub auth …`.
#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Whether the token may call METHOD (as WhoAmI lists them: Activate,
    /// ApproveRollout) in NAMESPACE, and why: prints yes or no and the
    /// reason, and exits 0 for yes, 1 for no (CheckAccess), as `kubectl auth
    /// can-i` does. A deployment-wide method (Backup, Import,
    /// RotateSigningKey, ListCheckpoints) takes no namespace.
    CanI {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        args: inspect::CanIArgs,
    },
}
